"""Single-frame inference from a checkpoint: the API the ROS node and users call.

>>> seg = Segmenter.from_checkpoint("model.safetensors", device="auto")
>>> labels = seg.predict(rgb=rgb_uint8, depth=depth_mm_uint16)   # RGB-D
>>> labels = seg.predict(rgb=rgb_uint8)                          # depth sensor lost
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from m3l_core.checkpoint import Checkpoint, load_checkpoint
from m3l_core.preprocess import depth_to_metres, normalize_depth, normalize_rgb, resize_bilinear, resize_nearest

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return dev


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


class Segmenter:
    """Segments RGB-D frames; a missing input (None) takes the missing-modality path."""

    def __init__(self, ckpt: Checkpoint, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
        self.precision = precision
        self.checkpoint = ckpt
        self.model = ckpt.model.to(self.device).eval()
        self.preprocessing = ckpt.preprocessing
        self.class_names = list(ckpt.class_names)
        self.palette = np.asarray(ckpt.palette, dtype=np.uint8)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", precision: str = "fp32") -> "Segmenter":
        return cls(load_checkpoint(path, device="cpu"), device=device, precision=precision)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.config.modalities

    def prepare(self, rgb: np.ndarray | None, depth: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Raw arrays -> (rgb, depth, present) tensors at the model input size, plus the output size."""
        if rgb is None and depth is None:
            raise ValueError("predict() needs rgb, depth or both; got neither")
        size = (rgb if rgb is not None else depth).shape[:2]
        if rgb is not None and depth is not None and np.asarray(depth).shape[:2] != size:
            raise ValueError(f"rgb is {size[0]}x{size[1]} but depth is {depth.shape[0]}x{depth.shape[1]}; "
                             "register depth to the colour image first")
        pre = self.preprocessing
        h, w = pre.input_size
        # The same resizes as EvalTransform, so a model sees at inference what it was evaluated on.
        if rgb is not None:
            x_rgb = torch.from_numpy(normalize_rgb(resize_bilinear(np.asarray(rgb), (h, w)), pre))
        else:
            x_rgb = torch.zeros(3, h, w)
        if depth is not None:
            x_depth = torch.from_numpy(normalize_depth(resize_nearest(depth_to_metres(depth), (h, w)), pre))
        else:
            x_depth = torch.zeros(1, h, w)
        present = torch.tensor([[rgb is not None, depth is not None]])
        return x_rgb[None], x_depth[None], present, size

    @torch.inference_mode()
    def logits(self, rgb: np.ndarray | None = None, depth: np.ndarray | None = None) -> torch.Tensor:
        """Ensemble logits (1, C, H, W) at the input image size, float32."""
        x_rgb, x_depth, present, size = self.prepare(rgb, depth)
        dev = self.device
        with autocast(dev, self.precision):
            out = self.model(x_rgb.to(dev, non_blocking=True), x_depth.to(dev, non_blocking=True), present.to(dev))
        return F.interpolate(out["ensemble"].float(), size=size, mode="bilinear", align_corners=False)

    def predict(
        self,
        rgb: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        return_confidence: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """HxW int64 class ids at the input's size (and HxW float32 confidence if asked).

        ``rgb`` is HxWx3 uint8 RGB; ``depth`` is HxW uint16 millimetres or
        float32 metres, with 0/NaN/Inf invalid. Either may be None.
        """
        logits = self.logits(rgb, depth)[0]
        if return_confidence:
            conf, labels = logits.softmax(0).max(0)
            return labels.cpu().numpy().astype(np.int64), conf.cpu().numpy().astype(np.float32)
        return logits.argmax(0).cpu().numpy().astype(np.int64)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Class ids -> HxWx3 uint8 palette image."""
        return self.palette[np.clip(labels, 0, len(self.palette) - 1)]
