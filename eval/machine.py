"""One line describing the machine a benchmark ran on (CPU model, cores, memory, torch)."""
from __future__ import annotations

import os
import platform


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    try:
        import torch
        tv = f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        tv = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}{tv}, {platform.system()} {platform.machine()}"
