"""The commands a user with own data types first: `rlr test RUN`, and `rlr train` without --config."""

import pytest
import torch

from rlr.cli import main
from rlr.presets import device_recipe


def test_without_config_the_cpu_gets_the_small_recipe():
    config, chosen = device_recipe(["train.device=cpu", "train.epochs=3"])
    assert config.name == "rlr_cpu" and config.model.num_layers == 2
    assert config.train.epochs == 3  # overrides still win
    assert chosen.startswith("no --config: the small CPU recipe") and "\n" not in chosen


def test_without_config_a_gpu_gets_the_papers_recipe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config, chosen = device_recipe()
    assert config.name == "run" and config.train.epochs == 200
    assert chosen == "no --config: the paper's recipe (200 epochs) on cuda"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["test"], "rlr test: which run? (rlr test RUN)"),
        (["test", "a", "--run", "b"], "rlr test: two runs given (a and --run b)"),
        (["test", "/nonexistent/run"], "/nonexistent/run/last.pt: checkpoint not found"),
        (["test", "--run", "/nonexistent/run"], "/nonexistent/run/last.pt: checkpoint not found"),
    ],
)
def test_test_takes_the_run_positionally_or_as_an_option(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"rlr: error: {message}"
