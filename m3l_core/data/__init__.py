"""Datasets: the folder format, the paper's datasets, and the synthetic RGB-D scene generator.

``open_dataset(config, split)`` opens any supported format (:mod:`m3l_core.data.datasets`);
``check_dataset`` checks every listed frame up front (:mod:`m3l_core.data.check`). The names
are imported on first use, so ``python -m m3l_core.data.check`` runs its module only once.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_dataset": "m3l_core.data.datasets", "DatasetSpec": "m3l_core.data.datasets",
    "DATA_FORMATS": "m3l_core.data.datasets", "check_dataset": "m3l_core.data.check",
    "ClassInfo": "m3l_core.data.folder", "DatasetError": "m3l_core.data.folder",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'm3l_core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
