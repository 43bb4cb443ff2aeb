"""Training augmentation and evaluation resizing, as in the paper.

Train: random scale from {0.5, 0.75, 1, 1.5, 1.75, 2} (RGB bilinear, depth and
label nearest), normalisation, random crop padded with 0 (images) and the
ignore index (labels), horizontal flip. Eval: resize the inputs to
``pre.input_size``, normalise, keep the label at its original size.

All randomness comes from an explicit ``numpy.random.Generator``. The trainer
derives it from ``(seed, stream, position)`` (:mod:`m3l_core.train.steps`), so a
resumed run sees exactly the same augmented data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from m3l_core.preprocess import (Preprocessing, depth_input, depth_to_metres, normalize_depth, normalize_rgb,
                                 resize_bilinear, resize_nearest, rgb_input)

PAPER_SCALES = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)


def _check_sample(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate a raw sample; depth may be float metres or uint16 mm (converted to metres)."""
    name = sample.get("name", "<unnamed>")
    rgb = np.asarray(sample["rgb"])
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"sample {name!r}: rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    depth = depth_to_metres(sample["depth"])
    label = sample.get("label")
    if label is not None:
        label = np.asarray(label)
        if label.ndim != 2:
            raise ValueError(f"sample {name!r}: label must be HxW, got shape {label.shape}")
    for key, arr in (("depth", depth), ("label", label)):
        if arr is not None and arr.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"sample {name!r}: {key} is {arr.shape[:2]} but rgb is {rgb.shape[:2]}")
    return rgb, depth, label


@dataclass
class TrainTransform:
    """Random scale, crop (with padding) and flip; returns model-ready tensors.

    Padding is applied AFTER normalisation, as in the reference, so padded
    pixels are 0 in normalised space (the ImageNet mean colour for RGB, the
    minimum for depth) and ``pre.ignore_index`` in the label. A crop larger
    than the scaled image is padded evenly on both sides (the reference's
    ``pad_image_to_shape``). Depth min-max is computed on the whole scaled
    image before cropping, so a crop keeps the frame's depth scale.
    """

    crop_size: tuple[int, int]  # (H, W); 540 for Stanford, 500 for SUN RGB-D in the paper
    pre: Preprocessing
    scales: tuple[float, ...] = PAPER_SCALES
    flip: bool = True

    def __post_init__(self) -> None:
        self.crop_size = tuple(int(v) for v in self.crop_size)
        self.scales = tuple(float(s) for s in self.scales)
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be (H, W) > 0, got {self.crop_size}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be non-empty and positive, got {self.scales}")

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        rgb, depth, label = _check_sample(sample)
        ign = self.pre.ignore_index
        # Draw every random number up front, in a fixed order.
        s = self.scales[int(rng.integers(len(self.scales)))]
        h, w = rgb.shape[:2]
        sh, sw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        ch, cw = self.crop_size
        y0 = int(rng.integers(0, max(sh - ch, 0) + 1))
        x0 = int(rng.integers(0, max(sw - cw, 0) + 1))
        flip = self.flip and bool(rng.random() < 0.5)

        rgb = resize_bilinear(rgb, (sh, sw))
        align = self.pre.nearest_align
        depth = resize_nearest(depth, (sh, sw), align=align)  # NaN (invalid) is copied, never blended
        depth_n = normalize_depth(depth, self.pre)[0]  # on the whole scaled frame
        ys, xs = slice(y0, y0 + ch), slice(x0, x0 + cw)
        # RGB normalisation is per pixel, so normalising the crop equals normalising then cropping.
        rgb_n = normalize_rgb(np.ascontiguousarray(rgb[ys, xs]), self.pre)
        depth_n = depth_n[ys, xs]
        hc, wc = depth_n.shape
        top, left = (ch - hc) // 2, (cw - wc) // 2
        inner = (slice(top, top + hc), slice(left, left + wc))

        rgb_out = np.zeros((3, ch, cw), np.float32)
        rgb_out[(slice(None), *inner)] = rgb_n
        depth_out = np.zeros((1, ch, cw), np.float32)
        depth_out[(0, *inner)] = depth_n
        label_out = np.full((ch, cw), ign, np.int64)
        if label is not None:
            label = resize_nearest(label, (sh, sw), align=align)
            label_out[inner] = label[ys, xs]
        if flip:
            rgb_out, depth_out, label_out = rgb_out[..., ::-1], depth_out[..., ::-1], label_out[..., ::-1]
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb_out)),
            "depth": torch.from_numpy(np.ascontiguousarray(depth_out)),
            "label": torch.from_numpy(np.ascontiguousarray(label_out)),
            "labeled": label is not None,
            "name": sample.get("name", ""),
        }


@dataclass
class EvalTransform:
    """Resize inputs to ``pre.input_size`` (RGB bilinear, depth nearest) and normalise, exactly as
    :func:`~m3l_core.preprocess.rgb_input` / :func:`~m3l_core.preprocess.depth_input` do at inference.

    The label keeps its ORIGINAL size (int64): evaluation upsamples the logits
    to the label, as in the paper. An unlabeled sample gets an all-ignore label.
    """

    pre: Preprocessing

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        rgb, depth, label = _check_sample(sample)
        # The test-time path of Segmenter too (resize alignment, depth bounds of the full frame).
        rgb_n = rgb_input(rgb, self.pre)
        depth_n = depth_input(depth, self.pre)
        if label is None:
            label_t = np.full(rgb.shape[:2], self.pre.ignore_index, np.int64)
        else:
            label_t = label.astype(np.int64)
        return {
            "rgb": torch.from_numpy(rgb_n),
            "depth": torch.from_numpy(depth_n),
            "label": torch.from_numpy(label_t),
            "labeled": label is not None,
            "name": sample.get("name", ""),
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch transformed samples: tensors stacked (a list if their shapes differ), flags as a bool tensor."""
    if not samples:
        raise ValueError("collate: empty batch")
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            same = all(v.shape == vals[0].shape for v in vals)
            out[key] = torch.stack(vals) if same else vals
        elif isinstance(vals[0], bool):
            out[key] = torch.tensor(vals, dtype=torch.bool)
        else:
            out[key] = list(vals)
    return out
