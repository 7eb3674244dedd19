"""Multi-process training: `torchrun -m rlr train` with 2 CPU processes (Gloo), precision and compile options."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rlr.config import load_config, save_config
from rlr.engine.build import build_model
from rlr.engine.distributed import Context
from rlr.engine.train import _own_dropout, shard_batches, train
from rlr.errors import ConfigError

from .conftest import tiny_config

# Two processes of batch 4 follow one process of batch 8 up to float rounding (the gradients are summed
# in another order, each process runs 1 thread), which Adam amplifies wherever a gradient is near zero.
# So the test compares the weight UPDATES: |w_ddp - w_single| / |w_single - w_init| (L2 over all
# weights). Measured after 2 epochs (6 Adam steps, jitter on) on the tiny config: 1.2e-3; the same
# single-process run with 1 vs 2 threads differs by 0.8e-3; a run with batch 4 instead of 8, i.e. a
# genuinely different training, differs by 0.66. The tolerance sits between, 10x above the rounding.
TOLERANCE = 1e-2

# `rlr train` under torchrun, recording every file each rank writes (every write goes through atomic_open).
RECORDING = textwrap.dedent(
    """
    import os, sys
    import rlr.atomic
    from rlr.cli import main

    real_open = rlr.atomic.atomic_open
    log = open(os.path.join(sys.argv[1], f"writes-{os.environ['RANK']}.txt"), "w")

    def recording_open(path, mode="wb"):
        log.write(f"{path}\\n")
        log.flush()
        return real_open(path, mode)

    rlr.atomic.atomic_open = recording_open
    sys.exit(main(sys.argv[2:]))
    """
)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _state(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _update_difference(ours, theirs, initial) -> float:
    """|ours - theirs| / |theirs - initial| over all weights: how far apart two runs ended, relative to how far they went."""
    apart = sum(((ours[k] - theirs[k]).double() ** 2).sum() for k in theirs) ** 0.5
    moved = sum(((theirs[k] - initial[k]).double() ** 2).sum() for k in theirs) ** 0.5
    return (apart / moved).item()


def _initial_weights(config, state):
    torch.manual_seed(config.train.seed)
    spec = state["model_spec"]
    return build_model(config, spec["channels"], [tuple(s) for s in spec["map_sizes"]]).state_dict()


@pytest.fixture(scope="module")
def ddp(tiny_demo, feature_cache_dir, tmp_path_factory):
    """2 processes of batch 4: one epoch recording every file write, then `--resume` to two epochs via `-m rlr`."""
    work = tmp_path_factory.mktemp("ddp")
    config_file = work / "ddp.yaml"
    save_config(tiny_config(tiny_demo, feature_cache_dir, "train.batch_size=4", "train.device=cpu"), config_file)
    (work / "recording.py").write_text(RECORDING)
    run_dir = work / "run"
    first = _torchrun(
        str(work / "recording.py"),
        str(work),
        "train",
        "--config",
        str(config_file),
        "--run-dir",
        str(run_dir),
        "--train.epochs",
        "1",
    )
    resumed = _torchrun("-m", "rlr", "train", "--resume", str(run_dir), "--train.epochs", "2")
    return config_file, run_dir, work, first.stdout + resumed.stdout


@pytest.mark.slow
def test_replicas_stay_identical_and_only_rank_0_writes(ddp):
    _, run_dir, work, stdout = ddp
    log = _log(run_dir)
    assert [row["epoch"] for row in log] == [1, 2]
    assert all(row["world_size"] == 2 and row["replica_max_difference"] == 0.0 for row in log)
    assert all(row["steps"] == 3 for row in log)  # 24 images, global batch 2 x 4
    assert (work / "writes-1.txt").read_text() == ""
    writes = (work / "writes-0.txt").read_text().splitlines()
    written = [line.rsplit("/", 1)[-1] for line in writes if str(run_dir) in line]
    assert sorted(written) == ["config.yaml", "last.pt", "run_info.json", "train_log.jsonl"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "last.pt", "run_info.json", "train_log.jsonl"]
    assert stdout.count("trained:") == 2 and stdout.count("resuming") == 1  # rank 0 only, each launch


@pytest.mark.slow
def test_two_processes_of_batch_4_resumed_equal_one_of_batch_8(ddp, tmp_path):
    config_file, run_dir, _, _ = ddp
    config = load_config(config_file, ["train.batch_size=8"])
    single = train(config, tmp_path / "single")
    ours, theirs = _state(run_dir), _state(single)
    assert ours["model"].keys() == theirs["model"].keys()
    assert _update_difference(ours["model"], theirs["model"], _initial_weights(config, theirs)) < TOLERANCE
    assert [r["loss"] for r in _log(run_dir)] == pytest.approx([r["loss"] for r in _log(single)], rel=1e-5)


@pytest.mark.parametrize("count,batch,world", [(24, 4, 2), (10, 2, 4), (7, 3, 1), (3, 2, 4)])
def test_shards_cover_each_global_batch_in_equal_parts(count, batch, world):
    order = torch.randperm(count)
    per_rank = [list(shard_batches(order, batch, rank, world)) for rank in range(world)]
    padded = -(-count // world) * world
    steps = -(-padded // (batch * world))
    assert all(len(batches) == steps for batches in per_rank)
    for step in range(steps):
        full = per_rank[0][step][0]
        shares = [full[mine] for _, mine in (batches[step] for batches in per_rank)]
        assert len({len(s) for s in shares}) == 1 and 0 < len(shares[0]) <= batch
        assert torch.equal(torch.cat(shares), full)
    every = torch.cat([full for full, _ in per_rank[0]])  # the order, padded with its own start
    assert len(every) == padded and torch.equal(every[:count], order)
    assert set(every[count:].tolist()) <= set(order.tolist())


def test_each_process_draws_its_own_dropout_and_leaves_the_shared_generator_alone():
    def draw(rank):
        context = Context(rank, rank, 2, torch.device("cpu"))
        with _own_dropout(context, seed=0, epoch=3, step=2):
            return torch.rand(4)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_precision_and_compile_are_validated():
    config = load_config(None)
    assert config.train.precision == "fp32" and config.train.compile is False
    with pytest.raises(ConfigError, match=r"unknown train.precision 'fp16' \(known: fp32, bf16\)"):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="train.compile must be true or false, got 1"):
        load_config(None, ["train.compile=1"])


def test_bf16_trains_like_fp32_on_the_cpu(tiny_demo, feature_cache_dir, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):  # one step: bf16 is emulated on most CPUs, several times slower
        extra = (f"train.precision={precision}", "train.epochs=1", "data.classes=[brick]")
        config = tiny_config(tiny_demo, feature_cache_dir, *extra)
        losses[precision] = _log(train(config, tmp_path / precision))[0]["loss"]
    assert losses["bf16"] != losses["fp32"] and losses["bf16"] == pytest.approx(losses["fp32"], rel=1e-2)


@pytest.mark.slow
def test_compiled_training_saves_the_plain_module(tiny_demo, feature_cache_dir, tmp_path, monkeypatch):
    """torch.compile (Dynamo with its eager backend here: tracing, no C++ compiler) keeps the checkpoint's keys."""
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    plain = train(config, tmp_path / "plain")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled = train(tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1", "train.compile=true"), tmp_path / "c")
    ours, theirs = _state(compiled), _state(plain)
    assert ours["model"].keys() == theirs["model"].keys()
    assert _update_difference(ours["model"], theirs["model"], _initial_weights(config, theirs)) < TOLERANCE
