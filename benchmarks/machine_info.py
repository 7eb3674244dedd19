"""What every benchmark's JSON records about the machine and stack it ran on."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> dict[str, object]:
    """torch version and threads, Python, CPU architecture and the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": cpus,
    }
