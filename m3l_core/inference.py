"""Single-frame inference from a checkpoint or an exported model: the API the ROS node and users call.

>>> seg = Segmenter.from_checkpoint("model.safetensors")            # backend="auto", num_threads=0 (auto)
>>> labels = seg.predict(rgb=rgb_uint8, depth=depth_mm_uint16)   # RGB-D
>>> labels = seg.predict(rgb=rgb_uint8)                          # depth sensor lost

Preprocessing (m3l_core.preprocess) and postprocessing (the model's logit upsampling, then
argmax) are one code path for every backend (m3l_core.backends); only the network runs in
torch, ONNX Runtime, OpenVINO or TensorRT.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from m3l_core.backends import TORCH_DTYPES, artifact_kind, choose_backend, make_runner, resolve_precision
from m3l_core.checkpoint import Checkpoint, load_checkpoint
from m3l_core.checkpoint_validation import validate_metadata
from m3l_core.model import upsample_logits
from m3l_core.preprocess import depth_input, depth_to_metres, depth_units_warning, rgb_input
from m3l_core.threads import configure_threads
from m3l_core.vocab import colorize

log = logging.getLogger(__name__)

PRECISIONS = TORCH_DTYPES  # name -> torch dtype (kept for callers such as the trainer)
# Upsampled logits held at once while labelling (bytes): classes are processed in groups this
# big, so the peak grows with H x W (running max, argmax, sum) and not with C x H x W.
LOGIT_BUDGET_BYTES = 64 << 20


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
    if precision not in TORCH_DTYPES:
        raise ValueError(f"precision must be one of {sorted(TORCH_DTYPES)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[precision])


@torch.inference_mode()
def labels_from_logits(logits: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False,
                       return_confidence: bool = False, budget_bytes: int = LOGIT_BUDGET_BYTES):
    """(1, C, h, w) logits -> HxW int64 labels (and float32 softmax confidence) at ``size``.

    Exactly ``argmax(upsample_logits(logits, size))`` (the first maximum on ties, as torch's
    argmax), without full-resolution logits of every class: classes are upsampled in groups of
    at most ``budget_bytes`` and folded one by one into a running maximum and a small-integer
    argmax, in place. Bilinear upsampling treats channels independently, so every value is
    bit-equal to the full upsampling. The confidence, the softmax maximum
    ``1 / sum_c exp(l_c - max)``, is accumulated online. Peak memory: a few HxW arrays.
    """
    logits = logits.float()
    c = logits.shape[1]
    h, w = int(size[0]), int(size[1])
    group = max(1, min(c, budget_bytes // max(1, 4 * h * w)))
    best = torch.full((h, w), float("-inf"), device=logits.device)
    idx = torch.zeros((h, w), dtype=torch.uint8 if c <= 256 else torch.int32, device=logits.device)
    total = torch.zeros((h, w), device=logits.device) if return_confidence else None
    for start in range(0, c, group):
        up = upsample_logits(logits[:, start:start + group], (h, w), align_corners=align_corners)[0]
        for k in range(up.shape[0]):
            v = up[k]
            if total is not None:  # rescale the running sum to the new maximum, then add this class
                new_best = torch.maximum(best, v)
                total.mul_(torch.exp(best - new_best)).add_(torch.exp(v - new_best))
            better = v > best  # strict: an earlier class keeps a tie, as argmax does
            idx.masked_fill_(better, start + k)
            if total is not None:
                best = new_best
            else:
                torch.maximum(best, v, out=best)
            del better
        del up
    labels = idx.cpu().numpy().astype(np.int64)
    if total is not None:
        return labels, total.reciprocal_().cpu().numpy().astype(np.float32, copy=False)
    return labels


class Segmenter:
    """Segments RGB-D frames; a missing input (None) takes the missing-modality path.

    Built from a checkpoint (``Segmenter(load_checkpoint(...))``) or, usually, with
    :meth:`from_checkpoint`, which also loads exported models and picks the backend.
    """

    def __init__(self, ckpt: Checkpoint | None = None, device: str | torch.device = "cpu",
                 precision: str | None = "fp32", *, backend: str = "torch", num_threads: int = 0,
                 max_depth: float | None = None, artifact: str | os.PathLike | None = None,
                 metadata: dict | None = None) -> None:
        """``ckpt`` (a loaded checkpoint) or ``artifact`` + ``metadata`` (an exported model)."""
        self.device = resolve_device(device)
        self.num_threads = configure_threads(num_threads)
        if ckpt is not None:
            source = ckpt.path or "<checkpoint>"
            self.model_config, self.preprocessing = ckpt.model_config, ckpt.preprocessing
            self.class_names, palette = list(ckpt.class_names), ckpt.palette
        else:
            if artifact is None or metadata is None:
                raise ValueError("Segmenter needs a checkpoint, or an exported model with its metadata")
            source = str(artifact)
            checked = validate_metadata(metadata, source=source)
            self.model_config, self.preprocessing = checked.model_config, checked.preprocessing
            self.class_names, palette = list(checked.class_names), checked.palette
        self.checkpoint = ckpt
        self._checkpoint_path: str | None = None
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.precision = resolve_precision(precision, backend, self.device)
        self.backend = backend
        self.max_depth = max_depth
        self._units_warned = False
        self._runner = make_runner(backend, model=ckpt.model if ckpt is not None else None,
                                   artifact=None if artifact is None else str(artifact), device=self.device,
                                   precision=self.precision, num_threads=self.num_threads)
        h, w = self.input_size
        log.info("segmenter: %s on %s, backend %s (%s), %d thread(s), model input %dx%d (HxW), %d classes",
                 Path(source).name, self.device, self.backend, self.precision, self.num_threads, h, w,
                 self.num_classes)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", precision: str | None = "fp32",
                        backend: str = "auto", num_threads: int = 0, max_depth: float | None = None) -> "Segmenter":
        """Load a ``.safetensors`` checkpoint or an exported ``.onnx`` / ``.xml`` / TensorRT engine.

        ``backend="auto"`` picks TensorRT (else torch) on CUDA and OpenVINO on CPUs where it is
        installed, else torch; a checkpoint is converted once and cached (m3l_core.export).
        ``precision`` is fp32 | bf16 | fp16, or ``auto``/None for the backend's validated fast
        one (fp16 TensorRT, bf16 OpenVINO on CPUs with native bf16, else fp32).
        ``num_threads`` 0 = auto (m3l_core.threads). ``max_depth`` (m) marks farther depth invalid.
        """
        dev = resolve_device(device)
        kind = artifact_kind(path)
        name = choose_backend(backend, kind, dev)
        if backend == "auto":
            log.info("backend auto -> %s (device %s, %s file)", name, dev, kind)
        kwargs = dict(device=dev, precision=precision, backend=name, num_threads=num_threads, max_depth=max_depth)
        if kind != "checkpoint":
            from m3l_core.export import read_artifact_metadata

            return cls(None, artifact=path, metadata=read_artifact_metadata(path), **kwargs)
        if name == "torch":
            return cls(load_checkpoint(path, device="cpu"), **kwargs)
        from m3l_core.checkpoint import read_metadata
        from m3l_core.export import cached_export

        metadata = read_metadata(path)
        validate_metadata(metadata, source=str(path))  # before any conversion
        fmt = "onnx" if name == "onnxruntime" else name
        p = resolve_precision(precision, name, dev)
        artifact = cached_export(path, fmt, p if fmt == "tensorrt" else "fp32")
        seg = cls(None, artifact=artifact, metadata=metadata, **kwargs)
        seg._checkpoint_path = str(path)  # the torch model stays on disk until .model is asked for
        return seg

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model_config.modalities)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the network runs at; images are resized to it and labels back to the image size."""
        return tuple(self.preprocessing.input_size)

    @property
    def model(self) -> torch.nn.Module:
        """The torch model of a checkpoint (loaded on first use for other backends; exported files have none)."""
        if self.checkpoint is None:
            if self._checkpoint_path is None:
                raise AttributeError(f"a Segmenter on an exported model ({self.backend}) has no torch model")
            self.checkpoint = load_checkpoint(self._checkpoint_path, device="cpu")
        return self.checkpoint.model

    def prepare(self, rgb: np.ndarray | None, depth: np.ndarray | None):
        """Raw arrays -> (rgb, depth, present) model inputs as numpy (float32, float32, bool), plus the image size."""
        if rgb is None and depth is None:
            raise ValueError("predict() needs rgb, depth or both; got neither")
        size = tuple((rgb if rgb is not None else depth).shape[:2])
        if rgb is not None and depth is not None and np.asarray(depth).shape[:2] != size:
            raise ValueError(f"rgb is {size[0]}x{size[1]} but depth is {depth.shape[0]}x{depth.shape[1]}; "
                             "register depth to the colour image first")
        pre = self.preprocessing
        h, w = pre.input_size
        # The test-time input functions shared with the evaluator (same resize, same depth rule).
        x_rgb = rgb_input(rgb, pre) if rgb is not None else np.zeros((3, h, w), np.float32)
        if depth is not None:
            metres = depth_to_metres(depth, max_depth=self.max_depth)
            if not self._units_warned:
                self._check_units(metres)
            x_depth = depth_input(metres, pre)
        else:
            x_depth = np.zeros((1, h, w), np.float32)
        present = np.array([[rgb is not None, depth is not None]])
        return x_rgb[None], x_depth[None], present, size

    def _check_units(self, metres: np.ndarray) -> None:
        """Warn once per Segmenter when depth looks like the wrong units (a 1/8 subsample: ~0.1 ms per frame)."""
        message = depth_units_warning(metres[::8, ::8])
        if message:
            self._units_warned = True
            log.warning("segmenter: %s", message)

    def model_logits(self, rgb: np.ndarray | None = None, depth: np.ndarray | None = None):
        """(1, C, h, w) float32 ensemble logits at the model input size, and the image size."""
        x_rgb, x_depth, present, size = self.prepare(rgb, depth)
        return self._runner(x_rgb, x_depth, present).float(), size

    @torch.inference_mode()
    def logits(self, rgb: np.ndarray | None = None, depth: np.ndarray | None = None) -> torch.Tensor:
        """Ensemble logits (1, C, H, W) at the input image size, float32 (C x H x W memory: predict() avoids it)."""
        out, size = self.model_logits(rgb, depth)
        return upsample_logits(out, size, align_corners=self.model_config.align_corners)

    def predict(
        self,
        rgb: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        return_confidence: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """HxW int64 class ids at the input's size (and HxW float32 confidence if asked).

        ``rgb`` is HxWx3 uint8 RGB; ``depth`` is HxW uint16 millimetres or float32 metres,
        with 0/NaN/Inf (and 65535 in uint16) invalid. Either may be None.
        """
        out, size = self.model_logits(rgb, depth)
        return labels_from_logits(out, size, align_corners=self.model_config.align_corners,
                                  return_confidence=return_confidence)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Class ids -> HxWx3 uint8 palette image (ids out of range are black)."""
        return colorize(labels, self.palette)
