"""One description of the machine a measurement ran on, for every benchmark's report."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(**versions: str) -> str:
    """``"<cpu>, N logical cores, <OS>, Python x, torch y, T threads"`` plus ``name version`` for each extra."""
    import torch

    parts = [cpu_name(), f"{os.cpu_count()} logical cores", platform.system(), f"Python {platform.python_version()}",
             f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    parts += [f"{name} {version}" for name, version in versions.items()]
    return ", ".join(parts)
