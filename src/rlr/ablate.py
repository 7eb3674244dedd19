"""`rlr ablate`: train the variants of one study on one dataset and write its comparison table.

Studies (the RLR supplementary's tables, plus the method comparison):
- `methods`: RLR vs the UniAD baseline, each with its own small CPU preset (or given configs);
- `fusion`: Table 1, alpha-fusion (alpha = 2) vs learnable theta-fusion;
- `refs`: Table 2, K = 1, 2, 3 learnable references, with parameters, memory and step time.

Every variant is an ordinary run under `<out>/runs/<variant>-<config hash>`, so variants that
share a config (the alpha run of `fusion` is the K = 1 run of `refs`) are trained once, and an
interrupted study continues where it stopped: finished runs are reused, a run with a partial
checkpoint is resumed, and anything else in the way is refused unless `overwrite` is set.
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

from rlr.atomic import write_text
from rlr.config import RunConfig, load_config
from rlr.engine.checkpoint import load_checkpoint
from rlr.engine.evaluate import evaluate, load_run
from rlr.engine.train import CHECKPOINT_NAME, resume_state, train, training_loss
from rlr.errors import RlrError
from rlr.presets import preset_config

STUDIES = ("methods", "fusion", "refs")
HEADLINE = ("I-AUROC", "P-AUROC")


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


def variant_config(variant: Variant, base: Path | None, overrides: Sequence[str], method_configs: dict[str, Path]) -> RunConfig:
    """The base (a YAML file, or the small CPU preset) with the variant's and then the user's overrides."""
    config_file = method_configs.get(variant.slug) if variant.preset else base
    if config_file is not None:
        return load_config(config_file, (*variant.overrides, *overrides))
    return preset_config(variant.preset or "rlr_cpu", (*variant.overrides, *overrides))


def config_hash(config: RunConfig) -> str:
    """A short hash of everything but the run's name, so equal settings share one run."""
    values = {**config.to_dict(), "name": "", "output_dir": ""}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def run_dir_for(out_dir: Path, variant: Variant, config: RunConfig) -> Path:
    """`<out>/runs/<slug>-<hash>`, or an existing run of another study with the same settings."""
    digest = config_hash(config)
    shared = sorted((out_dir / "runs").glob(f"*-{digest}"))
    return shared[0] if shared else out_dir / "runs" / f"{variant.slug}-{digest}"


def ensure_run(config: RunConfig, run_dir: Path, overwrite: bool, log: Callable[[str], None]) -> None:
    """Train and test the run unless it is already complete; resume a partial one."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.is_file() and not overwrite:
        saved, state = resume_state(run_dir)
        if saved.to_dict() != config.to_dict():
            raise RlrError(f"{run_dir}: holds a run with another config; remove it or pass --overwrite")
        if state["epoch"] < config.train.epochs:
            log(f"{run_dir.name}: resuming after epoch {state['epoch']}")
            train(config, run_dir, resume=state)
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


def step_seconds(config: RunConfig, model: torch.nn.Module, inputs: list[torch.Tensor], steps: int = 3) -> float:
    """Median wall time of a training step (forward, loss, backward, Adam) after one warm-up step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: timing only, the weights stay
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = training_loss(config, model, model(inputs), inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
        run_dir = run_dir_for(out_dir, variant, config)
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
    write_text(out_dir / f"{study}.json", json.dumps(result, indent=2) + "\n")
    write_text(out_dir / f"{study}.md", study_markdown(result))
    return result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def study_markdown(result: dict[str, Any]) -> str:
    """The study's headline table (mean I-/P-AUROC per variant), its costs, then per-class detail."""
    rows = result["rows"]
    study = result["study"]
    lines = [f"# Study: {study}", "", "| variant | " + " | ".join(HEADLINE) + " |", "|---|" + "---:|" * len(HEADLINE)]
    lines += [f"| {r['variant']} | " + " | ".join(_pct(r["mean"].get(m)) for m in HEADLINE) + " |" for r in rows]
    lines += ["", "Mean over classes, percent, last epoch.", ""]
    threads = torch.get_num_threads()
    cost_note = f"Costs at the training batch size on random features; step time on {threads} CPU thread(s)."
    lines += ["| variant | parameters | activations kept for backward (MiB) | ms / training step |", "|---|---:|---:|---:|"]
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
    classes = list(rows[0]["per_class"]) if rows else []
    lines += ["", "Per class (I-AUROC / P-AUROC):", "", "| variant | " + " | ".join(classes) + " |"]
    lines.append("|---|" + "---:|" * len(classes))
    for r in rows:
        cells = [f"{_pct(r['per_class'][c].get('I-AUROC'))} / {_pct(r['per_class'][c].get('P-AUROC'))}" for c in classes]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""] + [f"- {r['variant']}: `{r['run']}`" for r in rows]
    return "\n".join(lines) + "\n"
