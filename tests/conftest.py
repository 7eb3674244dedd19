"""Shared fixtures: a tiny built-in demo dataset and a fast config for end-to-end tests."""

import os
from pathlib import Path

import pytest

from rlr.data.demo import generate_demo

REALMINI = Path(os.environ.get("RLR_REALMINI", Path(__file__).resolve().parents[2] / "shared" / "data" / "realmini"))

# 128 px keeps every test quick: Lite0 gives 16x16 and 8x8 maps, windows 5 and 3.
TINY = (
    "data.image_size=128",
    "model.windows=[5, 3]",
    "model.hidden_dims=[32, 64]",
    "model.num_layers=1",
    "model.num_heads=2",
    "train.epochs=2",
    "train.batch_size=8",
)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (the benchmarks' --threads) must not change later tests' numbers."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small demo set (4 classes, 6 train / 3 good / 2 per defect kind) at 128 px."""
    root = tmp_path_factory.mktemp("demo") / "data"
    return generate_demo(root, seed=0, image_size=128, n_train=6, n_test_good=3, n_test_defect=2)


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture
def realmini() -> Path:
    if not REALMINI.is_dir():
        pytest.skip(f"realmini data not found at {REALMINI} (set RLR_REALMINI to its path)")
    return REALMINI


def tiny_config(demo_root: Path, cache_dir: Path, *extra: str):
    """The small CPU preset on the tiny demo set, with the shared feature cache; `extra` overrides last."""
    from rlr.presets import cpu_config

    return cpu_config((f"data.root={demo_root}", f"train.cache_dir={cache_dir}", *TINY, *extra))


def realmini_class_config(realmini_root: Path, cache_dir: Path):
    """One small real class (metal_plate, 53 training images) at 256 px, a narrow one-layer model, one epoch."""
    from rlr.presets import cpu_config

    return cpu_config(
        (
            f"data.root={realmini_root}",
            "data.classes=[metal_plate]",
            f"train.cache_dir={cache_dir}",
            "model.hidden_dims=[32, 64]",
            "model.num_layers=1",
            "train.epochs=1",
        )
    )
