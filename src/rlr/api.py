"""What `rlr test` runs, for Python users too: the engine scores the run, the report package writes it.

Training is `rlr.engine.train.train`; scoring new images is `rlr.load` (`rlr.deploy.model`).
"""

from __future__ import annotations

from pathlib import Path

from rlr.config import EvalConfig
from rlr.engine.evaluate import protocol, test_results
from rlr.report.run import write_results
from rlr.results import ClassResult


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
    write_results(out_dir, results, protocol(config), config.data.image_size)
    return results
