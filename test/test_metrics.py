"""Metric functions against hand-computed confusion matrices."""
from __future__ import annotations

import math

import pytest
import torch

from m3l_core.metrics import (
    accuracy_per_class,
    confusion_matrix,
    iou_per_class,
    mean_accuracy,
    miou,
    pixel_accuracy,
    summarize,
)


def test_confusion_matrix_counts_rows_gt_and_skips_ignore_and_out_of_range():
    # 4 classes; class 3 never appears. 255 and 7 (out of range) are skipped.
    target = torch.tensor([[0, 0, 1, 1], [2, 255, 2, 7]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 3, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([
        [1, 1, 0, 0],  # gt 0: one right, one predicted as 1
        [0, 2, 0, 0],  # gt 1: both right
        [1, 0, 1, 0],  # gt 2: one as 0, one right
        [0, 0, 0, 0],  # gt 3: absent
    ])
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)
    assert int(cm.sum()) == 6  # 8 pixels minus ignore and out-of-range


def test_confusion_matrix_is_summable_over_batches():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 9, 11), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 4, (4, 9, 11), generator=g)
    whole = confusion_matrix(pred, target, 4)
    parts = sum(confusion_matrix(pred[i], target[i], 4) for i in range(4))
    assert torch.equal(whole, parts)


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 3)


def test_confusion_matrix_honours_in_range_ignore_index():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 3, ignore_index=2)
    assert torch.equal(cm, torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]]))


def test_scores_on_hand_computed_matrix_with_absent_class():
    # rows gt, cols pred; class 3 absent from both -> excluded.
    cm = torch.tensor([
        [3, 1, 0, 0],
        [0, 2, 2, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ])
    # IoU: c0 = 3 / (4 + 4 - 3) = 3/5; c1 = 2 / (4 + 3 - 2) = 2/5; c2 = 1 / (2 + 3 - 1) = 1/4
    iou = iou_per_class(cm)
    assert iou[:3].tolist() == pytest.approx([0.6, 0.4, 0.25])
    assert math.isnan(float(iou[3]))
    assert miou(cm) == pytest.approx((0.6 + 0.4 + 0.25) / 3)
    acc = accuracy_per_class(cm)
    assert acc[:3].tolist() == pytest.approx([0.75, 0.5, 0.5])
    assert mean_accuracy(cm) == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert pixel_accuracy(cm) == pytest.approx(6 / 10)


def test_class_only_predicted_counts_with_zero_iou():
    # Class 2 is never in the GT but is predicted: IoU 0 (it occurs), accuracy undefined.
    cm = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert miou(cm) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert math.isnan(float(accuracy_per_class(cm)[2]))
    assert mean_accuracy(cm) == pytest.approx((2 / 3 + 1.0) / 2)


def test_metrics_end_to_end_from_pixels():
    # 2x3 image, 3 classes, one ignore pixel.
    target = torch.tensor([[0, 0, 255], [1, 1, 1]])
    pred = torch.tensor([[0, 1, 2], [1, 1, 0]])
    cm = confusion_matrix(pred, target, 3)
    # c0: tp1, fp1 (gt1->0), fn1 (gt0->1) -> 1/3; c1: tp2, fp1, fn1 -> 2/4; c2: absent
    assert miou(cm) == pytest.approx((1 / 3 + 0.5) / 2)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_summarize_percent_and_none_for_absent():
    cm = torch.tensor([[3, 1, 0, 0], [0, 2, 2, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    s = summarize(cm, ["a", "b", "c", "d"])
    assert s["miou"] == pytest.approx(100 * (0.6 + 0.4 + 0.25) / 3)
    assert s["macc"] == pytest.approx(100 * (0.75 + 0.5 + 0.5) / 3)
    assert s["pixel_acc"] == pytest.approx(60.0)
    assert s["per_class_iou"]["a"] == pytest.approx(60.0)
    assert s["per_class_iou"]["d"] is None
    assert s["num_pixels"] == 10
    with pytest.raises(ValueError, match="class names"):
        summarize(cm, ["a", "b"])


def test_empty_matrix_gives_none():
    s = summarize(torch.zeros(3, 3, dtype=torch.int64), ["a", "b", "c"])
    assert s["miou"] is None and s["macc"] is None and s["pixel_acc"] is None
