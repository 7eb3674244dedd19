"""Load on `rlr serve`: throughput, latency percentiles, errors and the server's peak memory.

    python benchmarks/serve_load.py [--run RUN] [--clients 1 4 16 50] [--requests 200] [--out PATH]

Without --run, the demo config is trained for one epoch on the built-in demo data (speed does not
depend on training). The server is `rlr serve RUN --port 0` in its own process on 127.0.0.1 only
(nothing else is ever contacted). For each client count, that many threads share a fixed number
of requests (`--requests`), each posting one demo test PNG as raw bytes to /predict over its own
keep-alive connection, so every loop stops by itself; a request that fails or takes longer than
`--request-timeout` is counted as an error and never retried. Reported per client count:
requests/s over the wall time, p50/p95/p99 latency of the successful requests, errors by kind
(HTTP status, connection reset, timeout), and the server's resident-set peak (VmHWM, reset
before each step through /proc/PID/clear_refs; Linux). Writes JSON to
benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from machine_info import machine_info

from rlr.atomic import write_text
from rlr.config import load_config
from rlr.data.demo import ensure_demo
from rlr.engine.train import train
from rlr.presets import cpu_config

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serve_load.json"
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 300


def prepare_run(folder: Path) -> Path:
    config = cpu_config((f"data.root={ensure_demo()}", "train.epochs=1", "train.device=cpu"))
    return train(config, folder / "run")


def start_server(run_dir: Path, queue: int) -> tuple[subprocess.Popen, int]:
    """`rlr serve` on a free port of 127.0.0.1; returns the process and the port it printed."""
    command = [
        sys.executable,
        "-m",
        "rlr",
        "serve",
        str(run_dir),
        "--host",
        HOST,
        "--port",
        "0",
        "--queue",
        str(queue),
        "--device",
        "cpu",
    ]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RLR_SERVE_TOKEN"},
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for line in server.stdout:  # type: ignore[union-attr]
        found = re.search(rf"http://{re.escape(HOST)}:(\d+)/", line)
        if found:
            threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe drained
            return server, int(found.group(1))
        if time.monotonic() > deadline:
            break
    server.kill()
    raise RuntimeError(f"rlr serve did not start (exit status {server.wait()})")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")


def client(port: int, bodies: list[bytes], claim, latencies: list[float], errors: Counter, timeout: float) -> None:
    """Post images until the shared request budget is spent; one connection, reopened after a failure."""
    connection = None
    while (index := claim()) is not None:
        connection = connection or http.client.HTTPConnection(HOST, port, timeout=timeout)
        started = time.perf_counter()
        try:
            connection.request(
                "POST",
                "/predict",
                body=bodies[index % len(bodies)],
                headers={"Content-Type": "application/octet-stream"},
            )
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors[f"HTTP {response.status}"] += 1
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            errors["connection reset"] += 1
            connection.close()
            connection = None
        except TimeoutError:
            errors["timeout"] += 1
            connection.close()
            connection = None
        except OSError as error:  # refused, unreachable: counted, never retried
            errors[type(error).__name__] += 1
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def load_step(pid: int, port: int, bodies: list[bytes], clients: int, requests: int, timeout: float) -> dict:
    """`requests` requests shared by `clients` threads; the figures of this step."""
    counter = iter(range(requests))
    lock = threading.Lock()

    def claim() -> int | None:
        with lock:
            return next(counter, None)

    latencies: list[float] = []
    errors: Counter = Counter()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the server's VmHWM to its current RSS
    threads = [
        threading.Thread(target=client, args=(port, bodies, claim, latencies, errors, timeout)) for _ in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "clients": clients,
        "requests": requests,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(ms[0]),
        "p95_ms": float(ms[1]),
        "p99_ms": float(ms[2]),
        "server_peak_rss_mib": status_kib(pid, "VmHWM") / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train the demo config for one epoch)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 50])
    parser.add_argument("--requests", type=int, default=200, help="requests per client count (default 200)")
    parser.add_argument("--queue", type=int, default=64, help="the server's --queue (default 64)")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="client-side seconds per request")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rlr-serve-load-") as tmp:
        run_dir = args.run or prepare_run(Path(tmp))
        root = Path(load_config(run_dir / "config.yaml").data.root)
        bodies = [p.read_bytes() for p in sorted(root.glob("*/test/*/*.png"))[:32]]
        server, port = start_server(run_dir, args.queue)
        try:
            idle_rss = status_kib(server.pid, "VmRSS") / 1024
            load_step(server.pid, port, bodies, 1, min(3, args.requests), args.request_timeout)  # warm-up
            rows = [load_step(server.pid, port, bodies, n, args.requests, args.request_timeout) for n in args.clients]
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()

    print(
        f"rlr serve on {HOST}, {len(bodies)} demo PNGs, {args.requests} requests per step; "
        f"server RSS after loading: {idle_rss:.0f} MiB"
    )
    print(f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} {'peak MiB':>8}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests_per_s']:>7.1f} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
            f"{r['p99_ms']:>8.0f} {r['errors']:>6} {r['server_peak_rss_mib']:>8.0f}"
        )
    report = {
        "server": f"rlr serve --host {HOST} --port 0 --queue {args.queue} --device cpu (uvicorn, one scoring at a time)",
        "images": f"{len(bodies)} demo test PNGs, raw bytes, no map or overlay",
        "requests_per_step": args.requests,
        "client_timeout_s": args.request_timeout,
        "server_rss_after_loading_mib": idle_rss,
        "results": rows,
        "load_average": os.getloadavg(),
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
