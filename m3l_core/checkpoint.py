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

from m3l_core.data.folder import default_palette
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing

FORMAT = "m3l-ros/checkpoint/v1"
META_KEY = "m3l"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, foreign or inconsistent."""


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
    if len(class_names) != cfg.num_classes:
        raise CheckpointError(f"{path}: {len(class_names)} class names for a model with {cfg.num_classes} classes")
    palette = [list(map(int, c)) for c in (palette if palette is not None else default_palette(cfg.num_classes))]
    if len(palette) != cfg.num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
        raise CheckpointError(f"{path}: palette must hold {cfg.num_classes} [r, g, b] colours in 0..255")
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
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = st_save(tensors, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, blob)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading the weights."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no M3L metadata; not an M3L-ROS checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the file alone; returns it in eval mode."""
    path = str(path)
    meta = read_metadata(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
        pre = Preprocessing.from_dict(meta["preprocessing"])
        class_names = list(meta["class_names"])
        palette = [list(c) for c in meta["palette"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({e})") from e
    model = LinearFusionSegFormer(cfg)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({e})") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model config ({e})") from e
    model.to(device).eval()
    return Checkpoint(model=model, model_config=cfg, class_names=class_names, palette=palette,
                      preprocessing=pre, metadata=meta, path=path)
