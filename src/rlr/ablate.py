"""`rlr ablate`: train the variants of one study on one dataset and write its comparison table.

Studies (the RLR supplementary's tables, the method comparison, and our own recipe changes):
- `methods`: RLR vs the UniAD baseline, each with its own small CPU preset (or given configs);
- `fusion`: Table 1, alpha-fusion (alpha = 2) vs learnable theta-fusion;
- `refs`: Table 2, K = 1, 2, 3 learnable references, with parameters, memory and step time;
- `recipe`: changes to the paper's training recipe (`RECIPE`), each alone and combined (`RECIPE_PLUS`),
  once per seed, with all seven metrics, per-seed values and their spread.

Every variant is an ordinary run under `<out>/runs/<variant>-<config hash>`, so variants that
share a config (the alpha run of `fusion` is the K = 1 run of `refs`) are trained once, and an
interrupted study continues where it stopped: finished runs are reused, a run with a partial
checkpoint is resumed, and anything else in the way is refused unless `overwrite` is set.
A recipe run is named by the hash of everything but its `eval` section, so a variant that changes
only how a run is scored (`top1`) tests another variant's run into `<out>/evals/<variant>-<hash>`.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlr.api import evaluate
from rlr.atomic import write_text
from rlr.config import RunConfig, load_config
from rlr.engine.checkpoint import load_checkpoint
from rlr.engine.evaluate import load_run
from rlr.engine.runs import CHECKPOINT_NAME, resume_state
from rlr.engine.step import train_step
from rlr.engine.train import train
from rlr.errors import ConfigError, RlrError
from rlr.metrics import METRIC_NAMES
from rlr.models.base import Reconstructor
from rlr.presets import preset_config
from rlr.report.tables import percent

STUDIES = ("methods", "fusion", "refs")
HEADLINE = ("I-AUROC", "P-AUROC")
RECIPE_METRICS = (*METRIC_NAMES, "mAD")
RECIPE_PER_CLASS = ("I-AUROC", "P-AUROC", "AUPRO")

# Settings added to the config after the first studies were run: left out of a run's hash while at
# their default, so a config that does not use them hashes as it did before they existed, and the
# runs trained then keep their folders (and are reused).
LATER_SETTINGS = (
    "model.input_dropout",
    "model.init",
    "train.schedule",
    "train.warmup_steps",
    "train.min_lr_ratio",
    "train.loss",
    "train.hard_fraction",
    "train.hard_factor",
    "train.hard_ramp_steps",
    "train.release_stepping",
    "eval.image_score_top_percent",
    "data.normal_test_ratio",
    "data.split_seed",
    "data.resize",
    "model.reference_reach",
)


@dataclass
class Variant:
    """One row of a study: a label and how its config is made from the base."""

    label: str
    slug: str
    overrides: tuple[str, ...] = ()
    preset: str | None = None  # a built-in config instead of the study's base


def study_variants(study: str) -> list[Variant]:
    if study == "methods":
        return [Variant("RLR", "rlr", preset="rlr_cpu"), Variant("UniAD", "uniad", preset="uniad_cpu")]
    if study == "fusion":
        return [
            Variant("alpha-fusion (alpha = 2)", "alpha", ("model.fusion=alpha", "model.alpha=2.0")),
            Variant("theta-fusion (learned)", "theta", ("model.fusion=theta",)),
        ]
    if study == "refs":
        return [Variant(f"K = {k}", f"k{k}", (f"model.num_references={k}",)) for k in (1, 2, 3)]
    raise RlrError(f"unknown study '{study}' (known: {', '.join(STUDIES)})")


# The hard-mined cosine loss; a model trained on the cosine loss alone is scored with the cosine map,
# since the MSE part of the paper's map means nothing for it.
HARD_COSINE = ("train.loss=cosine", "train.hard_fraction=0.1", "eval.map_score=cosine")
TOP_ONE_PERCENT = "eval.image_score_top_percent=1"
BATCH_FOUR = "train.batch_size=4"

# The recipe study's combination: the settings of configs/rlr_plus_cpu.yaml over the paper recipe,
# chosen from the 12-epoch realmini rows of the single changes (docs/recipe.md).
RECIPE_PLUS = (*HARD_COSINE, TOP_ONE_PERCENT, BATCH_FOUR)

# The recipe study: each change to the paper's recipe (the study's base config) alone, then combined.
RECIPE = (
    Variant("paper recipe", "paper"),
    Variant("image score: mean of the top 1 %", "top1", (TOP_ONE_PERCENT,)),
    Variant("anomaly map: cosine distance", "cosmap", ("eval.map_score=cosine",)),
    Variant("cosine loss, hard mining 10 %, cosine map", "hardcos", HARD_COSINE),
    Variant("batch 4 (the paper's): twice the steps", "batch4", (BATCH_FOUR,)),
    Variant("input dropout 0.2", "dropout", ("model.input_dropout=0.2",)),
    Variant("input dropout 0.2, no jitter", "dropout_nojitter", ("model.input_dropout=0.2", "train.jitter_scale=0")),
    Variant("cosine schedule, 100 warm-up steps", "warmcos", ("train.schedule=cosine", "train.warmup_steps=100")),
    Variant("reference read whole (global LCA)", "global_ref", ("model.reference_reach=global",)),
    Variant("release initialisation", "release_init", ("model.init=release",)),
    Variant("release stepping (one step per level)", "release_step", ("train.release_stepping=true",)),
    Variant("backbone EfficientNet-Lite1", "lite1", ("backbone.name=tf_efficientnet_lite1",)),
    Variant("backbone EfficientNet-Lite2", "lite2", ("backbone.name=tf_efficientnet_lite2",)),
    Variant(
        "backbone levels 1, 2, 3", "levels123", ("backbone.out_indices=[1, 2, 3]", "model.hidden_dims=[32, 64, 128]")
    ),
    Variant("combined (plus)", "plus", RECIPE_PLUS),
)


def select_variants(variants: Sequence[Variant], slugs: Sequence[str] | None) -> list[Variant]:
    """The variants named by `slugs` (all when None), in table order; an unknown slug is an error."""
    known = [v.slug for v in variants]
    unknown = [slug for slug in slugs or () if slug not in known]
    if unknown:
        raise RlrError(f"unknown variant '{unknown[0]}' (known: {', '.join(known)})")
    return [v for v in variants if slugs is None or v.slug in slugs]


def variant_config(
    variant: Variant, base: Path | None, overrides: Sequence[str], method_configs: dict[str, Path]
) -> RunConfig:
    """The base (a YAML file, or the small CPU preset) with the user's and then the variant's overrides.

    The variant's come last: they are what the row measures, so a user's setting of the same key
    (say train.batch_size for every row) must not turn the variant back into the base.
    """
    config_file = method_configs.get(variant.slug) if variant.preset else base
    if config_file is not None:
        return load_config(config_file, (*overrides, *variant.overrides))
    return preset_config(variant.preset or "rlr_cpu", (*overrides, *variant.overrides))


def _settings(config: RunConfig, ignored: Sequence[str] = ()) -> dict[str, Any]:
    """The config as hashed: name and output folder blanked, `ignored` sections and unused later settings left out."""
    values = {**config.to_dict(), "name": "", "output_dir": ""}
    defaults = RunConfig().to_dict()
    for section in ignored:
        del values[section]
    for section, key in (dotted.split(".") for dotted in LATER_SETTINGS):
        if key in values.get(section, {}) and values[section][key] == defaults[section].get(key):
            del values[section][key]
    return values


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def config_hash(config: RunConfig) -> str:
    """A short hash of everything but the run's name, so equal settings share one run."""
    return _digest(_settings(config))


def training_settings(config: RunConfig) -> dict[str, Any]:
    """What decides the trained weights: everything but the name and the `eval` section."""
    return _settings(config, ("eval",))


def training_hash(config: RunConfig) -> str:
    """A short hash of the training settings, so variants that differ only in scoring share one run."""
    return _digest(training_settings(config))


def run_dir_for(out_dir: Path, slug: str, digest: str) -> Path:
    """`<out>/runs/<slug>-<digest>`, or an existing run of another study or variant with the same digest."""
    shared = sorted((out_dir / "runs").glob(f"*-{digest}"))
    return shared[0] if shared else out_dir / "runs" / f"{slug}-{digest}"


def ensure_run(
    config: RunConfig,
    run_dir: Path,
    overwrite: bool,
    log: Callable[[str], None],
    settings: Callable[[RunConfig], Any] = RunConfig.to_dict,
) -> None:
    """Train and test the run unless it is already complete; resume a partial one.

    A run already there must agree with `config` on `settings` (all of it by default); it is
    continued and tested with its own config.
    """
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.is_file() and not overwrite:
        saved, state = resume_state(run_dir)
        if settings(saved) != settings(config):
            raise RlrError(f"{run_dir}: holds a run with another config; remove it or pass --overwrite")
        if state["epoch"] < saved.train.epochs:
            log(f"{run_dir.name}: resuming after epoch {state['epoch']}")
            train(saved, run_dir, resume=state)
        elif (run_dir / "metrics.json").is_file():
            log(f"{run_dir.name}: done earlier, reused")
            return
    else:
        log(f"{run_dir.name}: training")
        train(config, run_dir, overwrite=overwrite)
    evaluate(run_dir)


def saved_activation_bytes(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward: the step's memory."""
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(list(inputs))
    return sum(storages.values())


def step_seconds(config: RunConfig, model: Reconstructor, inputs: list[torch.Tensor], steps: int = 3) -> float:
    """Median wall time of the trainer's step (jitter, forward, loss, backward, Adam) after one warm-up step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: timing only, the weights stay
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        train_step(config, model, optimizer, inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def run_costs(run_dir: Path) -> dict[str, float]:
    """Parameters, memory kept for backward and step time at the training batch size, on random features.

    Measured here, one variant after another, rather than read from the training log, so every
    variant of a table is timed under the same conditions.
    """
    config, model, state = load_run(run_dir)
    model.train()
    spec = state["model_spec"]
    generator = torch.Generator().manual_seed(0)
    shapes = zip(spec["channels"], spec["map_sizes"])
    inputs = [torch.randn(config.train.batch_size, c, *size, generator=generator) for c, size in shapes]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "activation_mib": saved_activation_bytes(model, inputs) / 2**20,
        "seconds_per_step": step_seconds(config, model, inputs),
        "cpu_threads": torch.get_num_threads(),
    }


def final_diagnostics(run_dir: Path) -> dict[str, float]:
    """The learned values (e.g. theta per layer) the last epoch logged."""
    history = load_checkpoint(run_dir / CHECKPOINT_NAME).get("history", [])
    last = history[-1] if history else {}
    return {k: v for k, v in last.items() if k not in ("epoch", "loss", "seconds", "steps")}


def run_study(
    study: str,
    out_dir: Path,
    base: Path | None = None,
    overrides: Sequence[str] = (),
    method_configs: dict[str, Path] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and test every variant, then write `<out>/<study>.md` and `.json`; returns the JSON."""
    out_dir = Path(out_dir)
    runs = []
    for variant in study_variants(study):
        config = variant_config(variant, base, overrides, method_configs or {})
        run_dir = run_dir_for(out_dir, variant.slug, config_hash(config))
        ensure_run(config, run_dir, overwrite, log)
        runs.append((variant, run_dir))
    rows = []
    for variant, run_dir in runs:  # costs measured together, after all training
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        rows.append(
            {
                "variant": variant.label,
                "run": str(run_dir),
                "overrides": list(variant.overrides),
                "mean": metrics["mean"],
                "per_class": metrics["per_class"],
                "costs": run_costs(run_dir),
                "learned": final_diagnostics(run_dir),
            }
        )
    result = {"study": study, "overrides": list(overrides), "base": str(base) if base else "preset", "rows": rows}
    write_tables(out_dir, study, result, study_markdown(result))
    return result


def write_tables(out_dir: Path, study: str, result: dict[str, Any], markdown: str) -> None:
    """`<out>/<study>.json` and `.md`, each written atomically."""
    write_text(out_dir / f"{study}.json", json.dumps(result, indent=2) + "\n")
    write_text(out_dir / f"{study}.md", markdown)


def _table_head(columns: Sequence[str]) -> list[str]:
    """The header and alignment lines of a table with one row per variant."""
    return ["| variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]


def _per_class_table(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """Per class, each variant's `names` as 'a / b / ...': the detail under a study's headline."""
    classes = list(rows[0]["per_class"]) if rows else []
    lines = [f"Per class ({' / '.join(names)}):", "", *_table_head(classes)]
    for r in rows:
        cells = [" / ".join(percent(r["per_class"][c].get(name)) for name in names) for c in classes]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return lines


def study_markdown(result: dict[str, Any]) -> str:
    """The study's headline table (mean I-/P-AUROC per variant), its costs, then per-class detail."""
    rows = result["rows"]
    study = result["study"]
    lines = [f"# Study: {study}", "", *_table_head(HEADLINE)]
    lines += [f"| {r['variant']} | " + " | ".join(percent(r["mean"].get(m)) for m in HEADLINE) + " |" for r in rows]
    lines += ["", "Mean over classes, percent, last epoch.", ""]
    threads = torch.get_num_threads()
    cost_note = f"Costs at the training batch size on random features; step time on {threads} CPU thread(s)."
    lines += _table_head(("parameters", "activations kept for backward (MiB)", "ms / training step"))
    for r in rows:
        c = r["costs"]
        lines.append(
            f"| {r['variant']} | {c['parameters']:,} | {c['activation_mib']:.1f} | {1000 * c['seconds_per_step']:.0f} |"
        )
    lines += ["", cost_note]
    learned = [r for r in rows if r["learned"]]
    if learned:
        lines += ["", "Learned fusion weights at the last epoch (theta1 weighs MLKA, theta2 LCA):", ""]
        for r in learned:
            values = ", ".join(f"{k} {v:.3f}" for k, v in r["learned"].items())
            lines.append(f"- {r['variant']}: {values}")
    lines += ["", *_per_class_table(rows, HEADLINE)]
    lines += ["", "Runs:", ""] + [f"- {r['variant']}: `{r['run']}`" for r in rows]
    return "\n".join(lines) + "\n"


def seeded_configs(
    variant: Variant, base: Path | None, overrides: Sequence[str], seeds: Sequence[int] | None
) -> list[RunConfig]:
    """The variant's config once per seed (`train.seed`, set last); the config's own seed when `seeds` is None."""
    extras = [()] if seeds is None else [(f"train.seed={seed}",) for seed in dict.fromkeys(seeds)]
    return [variant_config(variant, base, (*overrides, *extra), {}) for extra in extras]


def valid_configs(
    variant: Variant, base: Path | None, overrides: Sequence[str], seeds: Sequence[int] | None
) -> list[RunConfig]:
    """The variant's seeded configs for the table; none where the overrides do not fit it (it cannot have run)."""
    try:
        return seeded_configs(variant, base, overrides, seeds)
    except ConfigError:
        return []


def tested_after_training(folder: Path, run_dir: Path) -> bool:
    """Whether `folder` holds metrics of the run's current weights (written after its last checkpoint)."""
    metrics, checkpoint = folder / "metrics.json", run_dir / CHECKPOINT_NAME
    return metrics.is_file() and checkpoint.is_file() and metrics.stat().st_mtime_ns >= checkpoint.stat().st_mtime_ns


def results_dir(out_dir: Path, variant: Variant, config: RunConfig, run_dir: Path) -> Path:
    """The run itself if it is tested with the variant's eval section, else the variant's `<out>/evals` folder."""
    if load_config(run_dir / "config.yaml").eval == config.eval:
        return run_dir
    return out_dir / "evals" / f"{variant.slug}-{config_hash(config)}"


def ensure_measured(
    out_dir: Path, variant: Variant, config: RunConfig, trained: set[Path], overwrite: bool, log: Callable[[str], None]
) -> None:
    """Train the variant's run (once per call of the study, even when shared) and test it with its eval section."""
    run_dir = run_dir_for(out_dir, variant.slug, training_hash(config))
    if run_dir not in trained:
        ensure_run(config, run_dir, overwrite, log, training_settings)
        trained.add(run_dir)
    results = results_dir(out_dir, variant, config, run_dir)
    if results == run_dir:
        return
    if tested_after_training(results, run_dir) and not overwrite:
        log(f"{results.name}: tested earlier, reused")
        return
    log(f"{results.name}: testing {run_dir.name} with the variant's eval settings")
    evaluate(run_dir, eval_config=config.eval, out_dir=results)


def train_seconds(run_dir: Path) -> float:
    """Training time: the sum of the per-epoch `seconds` in train_log.jsonl (feature extraction not included)."""
    lines = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return sum(json.loads(line)["seconds"] for line in lines if line.strip())


def seed_measurement(out_dir: Path, variant: Variant, config: RunConfig) -> dict[str, Any] | None:
    """One seed's row values, read from the files the study wrote; None while the variant is not measured."""
    run_dir = run_dir_for(out_dir, variant.slug, training_hash(config))
    if not tested_after_training(run_dir, run_dir):
        return None
    results = results_dir(out_dir, variant, config, run_dir)
    if not tested_after_training(results, run_dir):
        return None
    metrics = json.loads((results / "metrics.json").read_text(encoding="utf-8"))
    return {
        "seed": config.train.seed,
        "run": str(run_dir),
        "results": str(results),
        "mean": {name: metrics["mean"].get(name) for name in RECIPE_METRICS},
        "per_class": {c: {name: row.get(name) for name in RECIPE_PER_CLASS} for c, row in metrics["per_class"].items()},
        "train_seconds": train_seconds(run_dir),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return statistics.fmean(defined) if defined else None


def _range(values: Sequence[float | None]) -> list[float] | None:
    defined = [v for v in values if v is not None]
    return [min(defined), max(defined)] if len(defined) > 1 else None


def recipe_row(variant: Variant, measured: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A variant's means over its measured seeds, their min-max range where there are two or more, and each seed."""
    classes = measured[0]["per_class"]
    row: dict[str, Any] = {
        "variant": variant.label,
        "slug": variant.slug,
        "overrides": list(variant.overrides),
        "seeds": [m["seed"] for m in measured],
        "mean": {name: _mean([m["mean"][name] for m in measured]) for name in RECIPE_METRICS},
        "per_class": {
            c: {name: _mean([m["per_class"][c][name] for m in measured]) for name in RECIPE_PER_CLASS} for c in classes
        },
        "train_seconds": _mean([m["train_seconds"] for m in measured]),
        "per_seed": list(measured),
    }
    if len(measured) > 1:
        row["range"] = {name: _range([m["mean"][name] for m in measured]) for name in RECIPE_METRICS}
        row["range"]["train_seconds"] = _range([m["train_seconds"] for m in measured])
    return row


def run_recipe(
    out_dir: Path,
    base: Path | None = None,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    slugs: Sequence[str] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and test the chosen recipe variants (all by default) once per seed, then write
    `<out>/recipe.md` and `.json` from every variant measured so far, so the study can be run step by step."""
    out_dir = Path(out_dir)
    # every chosen config is built, and so checked, before the first run trains
    plan = [(v, seeded_configs(v, base, overrides, seeds)) for v in select_variants(RECIPE, slugs)]
    trained: set[Path] = set()
    for variant, configs in plan:
        for config in configs:
            ensure_measured(out_dir, variant, config, trained, overwrite, log)
    rows, not_run = [], []
    for variant in RECIPE:
        configs = valid_configs(variant, base, overrides, seeds)
        measured = [m for m in (seed_measurement(out_dir, variant, c) for c in configs) if m is not None]
        if measured:
            rows.append(recipe_row(variant, measured))
        else:
            not_run.append(variant.slug)
    result = {
        "study": "recipe",
        "overrides": list(overrides),
        "base": str(base) if base else "preset",
        "rows": rows,
        "not_run": not_run,
    }
    write_tables(out_dir, "recipe", result, recipe_markdown(result))
    return result


def _with_range(mean: float | None, spread: list[float] | None, show: Callable[[float | None], str]) -> str:
    return show(mean) + (f" ({show(spread[0])}-{show(spread[1])})" if spread else "")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def recipe_markdown(result: dict[str, Any]) -> str:
    """All seven metrics and mAD per variant (mean over seeds, min-max range), train time, per-class detail."""
    rows = result["rows"]
    lines = ["# Study: recipe", "", *_table_head(("seeds", *RECIPE_METRICS, "train s"))]
    for r in rows:
        spread = r.get("range", {})
        cells = [", ".join(map(str, r["seeds"]))]
        cells += [_with_range(r["mean"][name], spread.get(name), percent) for name in RECIPE_METRICS]
        cells.append(_with_range(r["train_seconds"], spread.get("train_seconds"), _seconds))
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean over classes, percent, last epoch; with two or more seeds, the mean over seeds and (min-max) over seeds.",
        "train s: the sum of the per-epoch seconds in the run's train_log.jsonl, feature extraction excluded;",
        "a variant that changes only the eval section tests another variant's run and shows that run's time.",
    ]
    if result["not_run"]:
        lines += ["", "Not run yet: " + ", ".join(result["not_run"]) + "."]
    lines += ["", *_per_class_table(rows, RECIPE_PER_CLASS), "", "Mean over seeds.", "", "Runs:", ""]
    for r in rows:
        for m in r["per_seed"]:
            tested = "" if m["results"] == m["run"] else f", testing `{m['run']}`"
            lines.append(f"- {r['variant']}, seed {m['seed']}: `{m['results']}`{tested}")
    return "\n".join(lines) + "\n"
