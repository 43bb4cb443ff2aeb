"""Segmentation metrics as pure functions over a confusion matrix.

Statistics first, then scores (as in segmentation_models_pytorch): a
``(C, C)`` confusion matrix is accumulated per batch, summed over batches and
DDP ranks, and only then turned into IoU and accuracies. Never average
per-batch or per-rank mIoU.

Conventions (those of the authors' ``hist_info`` / ``compute_score`` in
harshm121/M3L ``src/utils/seg_opr/metrics.py``):

* rows are ground truth, columns are predictions;
* only pixels whose label is in ``[0, C)`` count, so ``ignore_index`` (255)
  and any other out-of-range id are skipped;
* a class absent from both prediction and ground truth has IoU NaN and is
  left out of the mean ("mIoU is the mean over classes that occur");
* a class absent from the ground truth has accuracy NaN and is left out of
  mAcc.

``summarize`` reports values in **percent** (0-100), like the paper's tables.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> torch.Tensor:
    """``(C, C)`` int64 matrix, ``cm[gt, pred]`` = pixel count, on ``target``'s device.

    ``pred`` and ``target`` are integer tensors of the same shape (any shape).
    Pixels whose label is outside ``[0, C)`` (e.g. ``ignore_index``) are skipped.
    ``ignore_index`` is accepted for readability; any out-of-range label is ignored.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be > 0, got {num_classes}")
    pred = pred.reshape(-1).to(torch.int64)
    target = target.reshape(-1).to(device=pred.device, dtype=torch.int64)
    keep = (target >= 0) & (target < num_classes) & (target != ignore_index)
    pred = pred[keep]
    target = target[keep]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predictions must be in [0, {num_classes}), got range "
                         f"[{int(pred.min())}, {int(pred.max())}]")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _check(cm: torch.Tensor) -> torch.Tensor:
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be (C, C), got shape {tuple(cm.shape)}")
    return cm.to(torch.float64)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class (fraction); NaN where the class is in neither pred nor GT."""
    cm = _check(cm)
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def accuracy_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Recall TP / GT pixels per class (fraction); NaN where the class has no GT pixel."""
    cm = _check(cm)
    gt = cm.sum(1)
    return torch.where(gt > 0, cm.diag() / gt.clamp_min(1), torch.full_like(gt, math.nan))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def miou(cm: torch.Tensor) -> float:
    """Mean IoU (fraction) over classes that occur in prediction or GT; NaN if none do."""
    return _nanmean(iou_per_class(cm))


def mean_accuracy(cm: torch.Tensor) -> float:
    """Mean per-class accuracy (fraction) over classes present in the GT."""
    return _nanmean(accuracy_per_class(cm))


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct pixels / counted pixels (fraction); NaN for an empty matrix."""
    cm = _check(cm)
    total = float(cm.sum())
    return float(cm.diag().sum()) / total if total > 0 else math.nan


def _pct(v: float) -> float | None:
    return None if math.isnan(v) else 100.0 * v


def summarize(cm: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Scores in **percent**: ``dict(miou, macc, pixel_acc, per_class_iou={name: value or None}, num_pixels)``.

    ``None`` marks an undefined value (class absent from both pred and GT, or
    an empty matrix), so the dict is JSON-safe.
    """
    cm = cm.detach().cpu()
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
    ious = iou_per_class(cm)
    return {
        "miou": _pct(miou(cm)),
        "macc": _pct(mean_accuracy(cm)),
        "pixel_acc": _pct(pixel_accuracy(cm)),
        "per_class_iou": {str(n): _pct(float(v)) for n, v in zip(class_names, ious)},
        "num_pixels": int(cm.sum()),
    }
