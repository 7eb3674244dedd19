"""The Python API, what the `rlr` command calls too: `run = rlr.train(...)`, `rlr.test(run)`, `rlr.load(run)`.

    run = rlr.train("rlr_cpu", data="/data/mvtec_ad", overrides={"train.epochs": 10})
    evaluation = rlr.test(run)   # metrics per class and their mean; writes the report `rlr test` writes
    model = rlr.load(run)        # deploy.model.Model: model.predict(paths, PIL images, arrays, tensors)

`train`'s config is a RunConfig, a YAML file, a built-in preset's name (`rlr.presets.PRESETS`) or
None: the recipe that fits the device, as `rlr train` without --config. `data` sets data.root;
`overrides` maps dotted keys to Python values, checked exactly as the CLI's `--section.key value`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rlr.config import EvalConfig, RunConfig, apply_override, from_dict, load_config, override_item
from rlr.deploy.model import Model, load
from rlr.engine.distributed import is_main_process
from rlr.engine.evaluate import protocol, test_results
from rlr.engine.train import train as train_run
from rlr.errors import ConfigError
from rlr.metrics import mean_over_classes
from rlr.presets import PRESETS, device_recipe, preset_config
from rlr.report.run import write_results
from rlr.results import ClassResult

__all__ = ["Evaluation", "Run", "config_for", "evaluate", "load", "test", "train"]

#: What `train` accepts as its config (see the module docstring).
ConfigSource = RunConfig | str | os.PathLike | None


@dataclass(frozen=True)
class Run:
    """A trained run: its folder and resolved config. Anything that takes a run folder takes it (`os.fspath`)."""

    path: Path
    config: RunConfig = field(repr=False)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def test(self, device: str | None = None) -> Evaluation:
        return test(self, device)

    def load(self, device: str | None = None) -> Model:
        return load(self, device)


@dataclass(frozen=True)
class Evaluation:
    """What `test` returns: the metric table (per class, and the mean row with mAD) and the results behind it."""

    per_class: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    results: dict[str, ClassResult] = field(repr=False)  # scores, maps and masks of every test image, per class
    report_dir: Path  # holds metrics.{json,csv,md}, scores.csv, report.html, failures.md


def config_for(
    config: ConfigSource = None, data: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[RunConfig, str | None]:
    """The config `train` would use, and the line saying which recipe was picked when `config` is None."""
    items = _override_items(data, overrides)
    if isinstance(config, RunConfig):
        values = config.to_dict()
        for item in items:
            apply_override(values, item)
        return from_dict(values), None
    if config is None:
        return device_recipe(items)
    if isinstance(config, str) and config in PRESETS:  # a preset's name wins over a file of that name
        return preset_config(config, tuple(items)), None
    return load_config(config, items), None


def _override_items(data: str | os.PathLike | None, overrides: Mapping[str, Any] | None) -> list[str]:
    """`data` and `overrides` as the CLI's `key=value` items; data.root given both ways is refused."""
    overrides = dict(overrides or {})
    if data is not None:
        if "data.root" in overrides:
            raise ConfigError("data.root given twice: as data= and in overrides; give it once")
        overrides = {"data.root": data, **overrides}
    return [override_item(key, value) for key, value in overrides.items()]


def train(
    config: ConfigSource = None,
    data: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Run:
    """Train a run (into `run_dir`, default output_dir/name) and return it; see the module docstring.

    Prints the start banner and one line per epoch (stderr); a folder holding a trained run is
    refused unless `overwrite`. Under torchrun every process calls this, as `rlr train` does.
    """
    resolved, chosen = config_for(config, data, overrides)
    if chosen is not None and is_main_process():
        print(chosen)
    path = train_run(resolved, Path(run_dir) if run_dir is not None else None, overwrite=overwrite)
    return Run(path, resolved)


def test(run: str | os.PathLike, device: str | None = None) -> Evaluation:
    """Test a run on every class's test set, write its report into it (as `rlr test`), return the metrics."""
    run_dir = Path(run)
    results = evaluate(run_dir, device)
    per_class = {name: result.metrics for name, result in results.items()}
    return Evaluation(per_class, mean_over_classes(per_class), results, run_dir)


def evaluate(
    run_dir: Path,
    device_name: str | None = None,
    eval_config: EvalConfig | None = None,
    out_dir: Path | None = None,
) -> dict[str, ClassResult]:
    """Test the run on every class's test set; writes metrics.{json,csv,md}, scores.csv, report.html, failures.md.

    They go into the run, or into `out_dir`; `eval_config` scores the run with other eval settings
    (give it an `out_dir`, so the run's own results stay those of its own settings).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    config, results = test_results(run_dir, device_name, eval_config=eval_config)
    write_results(out_dir, results, protocol(config), config.data.image_size, config.data.resize)
    return results
