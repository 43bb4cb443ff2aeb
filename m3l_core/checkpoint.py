"""Self-describing checkpoints: one safetensors file, weights plus JSON metadata.

The metadata holds everything needed to use the weights: the model config,
class names and palette, the ignore index and the preprocessing. Nothing is
ever unpickled. Writes are atomic: a temporary file in the same folder is
fsynced and then renamed over the target, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from m3l_core.checkpoint_validation import (  # noqa: F401 - re-exported: the public checkpoint API
    BOUNDS, FORMAT, CheckedMetadata, CheckpointError, check_tensor_shapes, expected_tensor_shapes, validate_metadata)
from m3l_core.data.folder import default_palette
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing

META_KEY = "m3l"


@dataclass
class Checkpoint:
    model: LinearFusionSegFormer
    model_config: ModelConfig
    class_names: list[str]
    palette: list[list[int]]
    preprocessing: Preprocessing
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def ignore_index(self) -> int:
        return self.preprocessing.ignore_index


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that ``path`` holds either the old or the new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_checkpoint(
    path: str | os.PathLike,
    model: LinearFusionSegFormer,
    *,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    preprocessing: Preprocessing | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically write ``model`` and its description to one safetensors file."""
    model = model.module if hasattr(model, "module") else model  # unwrap DDP
    cfg = model.config
    class_names = [str(n) for n in class_names]
    palette = [[int(v) for v in c] for c in (palette if palette is not None else default_palette(cfg.num_classes))]
    pre = preprocessing or Preprocessing()
    meta = {
        "format": FORMAT,
        "model": cfg.to_dict(),
        "class_names": class_names,
        "palette": palette,
        "ignore_index": pre.ignore_index,
        "preprocessing": pre.to_dict(),
        "extra": extra or {},
    }
    meta = json.loads(json.dumps(meta))  # tuples -> lists: check exactly what a reader will see
    validate_metadata(meta, source=str(path))  # never write a file that load_checkpoint would refuse
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = st_save(tensors, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, blob)


def _check_readable(path: str) -> None:
    """Open the file once so OS errors keep their own reason (permission denied is not "not found")."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint not found: {path} ({e.strerror})", path=path) from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e.strerror or e} ({type(e).__name__})",
                              path=path) from e


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading the weights (not yet validated)."""
    path = str(path)
    _check_readable(path)
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})", path=path) from e
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no M3L metadata; not an M3L-ROS checkpoint", path=path)
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({e})", path=path) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: unsupported checkpoint format {found!r}, expected {FORMAT!r}",
                              path=path, field="format")
    return meta


def read_tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor, from the safetensors header alone (no tensor is read)."""
    path = str(path)
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})", path=path) from e


def check_finite(state: dict[str, torch.Tensor], *, source: str) -> None:
    """Reject NaN/Inf weights, naming the first tensor that holds them."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{source}: tensor '{k}' holds {bad} NaN/Inf value(s) of {v.numel()}",
                                  path=source, field=k)


def build_model(config: ModelConfig) -> LinearFusionSegFormer:
    """The one place a checkpoint's model is allocated (after every check has passed)."""
    return LinearFusionSegFormer(config)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the file alone; returns it in eval mode.

    Order matters: metadata (types, ranges, class list), then tensor shapes from the file
    header against the config, then the weights (finite), and only then the model is built.
    """
    path = str(path)
    meta = read_metadata(path)
    checked = validate_metadata(meta, source=path)
    check_tensor_shapes(read_tensor_shapes(path), checked.model_config, source=path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({e})", path=path) from e
    check_finite(state, source=path)
    model = build_model(checked.model_config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model config ({e})", path=path) from e
    model.to(device).eval()
    return Checkpoint(model=model, model_config=checked.model_config, class_names=checked.class_names,
                      palette=checked.palette, preprocessing=checked.preprocessing, metadata=meta, path=path)
