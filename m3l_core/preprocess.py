"""Input conventions shared by training, evaluation, inference and the ROS node.

Raw data enters the system in one of two forms:

* RGB: ``HxWx3 uint8`` in RGB channel order.
* Depth: ``HxW`` either ``uint16`` millimetres or ``float32`` metres (REP 118).
  0, NaN and +/-Inf are invalid, and so is 65535 in ``uint16`` (see :func:`depth_to_metres`).

:func:`depth_to_metres` turns any depth into ``float32`` metres with NaN for
invalid pixels; :func:`normalize_rgb` and :func:`normalize_depth` turn raw
arrays into the float tensors the model expects. The settings travel inside
every checkpoint as a :class:`Preprocessing` record, so a checkpoint always
knows how its inputs must be prepared.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "minmax": per-image min-max over the VALID pixels (the project). "minmax_all": min-max over all
# pixels with invalid ones as 0 (the reference), i.e. depth / max whenever a pixel is invalid.
# "metric": a fixed range in metres.
DEPTH_NORMS = ("minmax", "metric", "minmax_all")
# Nearest-neighbour resize alignment. "center": source pixel floor((i + 0.5) * src / dst) (the project);
# "corner": floor(i * src / dst), what cv2.INTER_NEAREST computes (the reference): 0, 2, 4... at 1/2.
NEAREST_ALIGNS = ("center", "corner")


@dataclass
class Preprocessing:
    """How raw RGB-D frames become model inputs."""

    input_size: tuple[int, int] = (480, 640)  # (H, W) the model sees at test time
    rgb_mean: tuple[float, float, float] = IMAGENET_MEAN
    rgb_std: tuple[float, float, float] = IMAGENET_STD
    # "minmax": per-image min-max of valid depth to [0, 1] (the project's default).
    # "minmax_all": min-max over all pixels, invalid = 0 (the reference implementation).
    # "metric": clip to depth_range metres, then scale to [0, 1]; stable across frames.
    depth_norm: str = "minmax"
    depth_range: tuple[float, float] = (0.0, 10.0)  # metres, used by "metric"
    ignore_index: int = 255
    nearest_align: str = "center"  # depth/label nearest resize: "center" (project) | "corner" (cv2, reference)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.rgb_mean = tuple(float(v) for v in self.rgb_mean)
        self.rgb_std = tuple(float(v) for v in self.rgb_std)
        self.depth_range = tuple(float(v) for v in self.depth_range)
        if self.depth_norm not in DEPTH_NORMS:
            raise ValueError(f"preprocessing.depth_norm must be one of {DEPTH_NORMS}, got {self.depth_norm!r}")
        if self.nearest_align not in NEAREST_ALIGNS:
            raise ValueError(f"preprocessing.nearest_align must be one of {NEAREST_ALIGNS}, got {self.nearest_align!r}")
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ValueError(f"preprocessing.input_size must be (H, W) > 0, got {self.input_size}")
        if not self.depth_range[1] > self.depth_range[0]:
            raise ValueError(f"preprocessing.depth_range must be (min, max) with max > min, got {self.depth_range}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


UINT16_NO_RETURN = 65535  # Kinect / 7-Scenes / Stanford "no return" marker in 16-bit depth
SUSPICIOUS_MEDIAN_M = 20.0  # indoor RGB-D cameras: a median beyond this means the units are wrong


def depth_to_metres(depth: np.ndarray, *, max_depth: float | None = None) -> np.ndarray:
    """Any supported depth array -> float32 metres, NaN where invalid. The project's one depth rule.

    ``uint16`` is millimetres and ``float32``/``float64`` is metres (REP 118). Invalid:
    0, NaN, +/-Inf, and 65535 in ``uint16`` ("no return" on Kinect-style sensors), plus
    anything beyond ``max_depth`` metres when it is given (``None`` or 0: no limit).
    Used identically by ``Segmenter``, the ROS node, the dataset loaders and ``record``.
    """
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        out = depth.astype(np.float32) * np.float32(1e-3)
        out[(depth == 0) | (depth == UINT16_NO_RETURN)] = np.nan
    elif depth.dtype in (np.float32, np.float64):
        out = depth.astype(np.float32, copy=True)
        out[~np.isfinite(out) | (out <= 0)] = np.nan
    else:
        raise ValueError(f"depth must be uint16 millimetres or float32 metres, got dtype {depth.dtype}")
    if max_depth:
        with np.errstate(invalid="ignore"):
            out[out > max_depth] = np.nan
    return out


def depth_units_warning(metres: np.ndarray) -> str | None:
    """A message when valid depth looks like the wrong units (median beyond 20 m), else None.

    Typical cause: 16UC1 data in 0.1 mm or 1/512 m steps labelled as millimetres. Callers
    log it once per source; it never changes the data.
    """
    valid = metres[np.isfinite(metres)]
    if valid.size == 0:
        return None
    median = float(np.median(valid))
    if median > SUSPICIOUS_MEDIAN_M:
        return (f"median valid depth is {median:.1f} m (> {SUSPICIOUS_MEDIAN_M:.0f} m): 16UC1 depth must be "
                "millimetres and 32FC1 metres (REP 118); convert other units before publishing/saving")
    return None


def valid_depth_fraction(depth: np.ndarray) -> float:
    """Fraction of pixels that carry a valid depth reading."""
    metres = depth_to_metres(depth)
    return float(np.isfinite(metres).mean()) if metres.size else 0.0


def normalize_rgb(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, ImageNet-normalised."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(pre.rgb_mean, np.float32)) / np.asarray(pre.rgb_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def depth_bounds(metres: np.ndarray, pre: Preprocessing) -> tuple[float, float] | None:
    """The ``(lo, hi)`` metres that :func:`normalize_depth` maps to 0 and 1, or None if no pixel is valid.

    Lets a caller take the bounds from one frame (the reference: the full original
    image) and apply them to a resized or cropped copy of it.
    """
    valid = np.isfinite(metres)
    if not valid.any():
        return None
    if pre.depth_norm == "metric":
        return tuple(pre.depth_range)
    lo, hi = float(metres[valid].min()), float(metres[valid].max())
    if pre.depth_norm == "minmax_all" and not valid.all():
        lo = min(lo, 0.0)  # invalid pixels count as 0 in the minimum
    return lo, hi


def normalize_depth(depth: np.ndarray, pre: Preprocessing, *, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Depth (uint16 mm or float metres) -> 1xHxW float32 in [0, 1].

    ``bounds`` (from :func:`depth_bounds`) default to this image's own. Invalid
    pixels take 0. A constant or all-invalid image maps to all zeros and never to NaN.
    """
    metres = depth_to_metres(depth)
    valid = np.isfinite(metres)
    out = np.zeros(metres.shape, np.float32)
    if bounds is None:
        bounds = depth_bounds(metres, pre)
    if bounds is not None and valid.any():
        lo, hi = bounds
        span = hi - lo
        if span > 1e-9:
            out[valid] = np.clip((metres[valid] - lo) / span, 0.0, 1.0)
    return out[None]


def depth_input(depth: np.ndarray, pre: Preprocessing, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Raw depth -> the model's 1xHxW input at ``hw`` (default ``pre.input_size``): THE test-time depth path.

    Resizes with ``pre.nearest_align``. ``minmax_all`` (the reference) takes its
    bounds from the full frame before resizing, as the reference normalises at
    load time; ``minmax`` (the project) from the resized frame, as it always did.
    """
    hw = tuple(pre.input_size if hw is None else hw)
    metres = depth_to_metres(depth)
    bounds = depth_bounds(metres, pre) if pre.depth_norm == "minmax_all" else None
    small = resize_nearest(metres, hw, align=pre.nearest_align)
    return normalize_depth(small, pre, bounds=bounds)


def rgb_input(rgb: np.ndarray, pre: Preprocessing, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Raw HxWx3 uint8 RGB -> the model's 3xHxW input at ``hw`` (default ``pre.input_size``)."""
    hw = tuple(pre.input_size if hw is None else hw)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:  # report the input, not the resized copy
        raise ValueError(f"rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    return normalize_rgb(resize_bilinear(rgb, hw), pre)


def resize_bilinear(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an image to ``(H, W)`` (RGB inputs)."""
    if img.shape[:2] == tuple(hw):
        return img
    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def nearest_indices(src: int, dst: int, align: str = "center") -> np.ndarray:
    """Source index of each of ``dst`` output pixels along one axis of length ``src``.

    ``center``: ``floor((i + 0.5) * src / dst)``. ``corner``: ``floor(i * (1 / (dst / src)))`` in
    double precision, exactly what cv2's INTER_NEAREST computes.
    """
    if align == "center":
        idx = ((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64)
    elif align == "corner":
        idx = np.floor(np.arange(dst, dtype=np.float64) * (1.0 / (dst / src))).astype(np.int64)
    else:
        raise ValueError(f"align must be one of {NEAREST_ALIGNS}, got {align!r}")
    return np.minimum(idx, src - 1)


def resize_nearest(img: np.ndarray, hw: tuple[int, int], *, align: str = "center") -> np.ndarray:
    """Nearest-neighbour resize to ``(H, W)`` (depth and label maps); ``align`` as in :data:`NEAREST_ALIGNS`.

    Plain indexing: works for any dtype (int64 labels included) and copies NaN
    (invalid depth) without ever blending it.
    """
    h, w = img.shape[:2]
    if (h, w) == tuple(hw):
        return img
    rows = nearest_indices(h, hw[0], align)
    cols = nearest_indices(w, hw[1], align)
    return img[rows[:, None], cols[None, :]]
