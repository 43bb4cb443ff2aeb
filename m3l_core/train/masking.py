"""What the student sees: per-sample modality masks and the batch plan of each framework.

A loaded batch holds ``n_labeled`` labeled samples followed by ``n_unlabeled``
unlabeled ones. A :class:`BatchPlan` turns it into the student's batch: which
loaded sample each row shows, which modalities are present, and which rows get
the ground-truth (OHEM) loss or the pseudo-label loss. The frameworks differ
only here:

==================  ===========================  ==========  ===============  ============
framework           student rows                 masked      ground truth     pseudo-label
==================  ===========================  ==========  ===============  ============
supervised          labeled                      none        all rows         none
modality_dropout    labeled                      every row   all rows         none
mean_teacher        labeled, unlabeled           none        labeled rows     unlabeled rows
m3l                 labeled, labeled copy,       copy and    labeled + copy   every row
                    unlabeled                    unlabeled
cps                 labeled, unlabeled           none, or    labeled rows     every row (the
                                                 every row                    other network's)
==================  ===========================  ==========  ===============  ============

``cps`` (cross pseudo supervision) trains two networks on the same rows; each row's pseudo-label
comes from the other network, not from a teacher. Its rows are masked only with
``loss.cps_modality_dropout`` (``mask=True`` here).

Masks are drawn per sample, uniformly (by default) among {mask RGB, mask depth,
mask nothing}, from an explicit ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

# Mask choices, in the order of LossConfig.mask_probs. Rows are `present` columns [rgb, depth].
MASK_CHOICES = ("mask_rgb", "mask_depth", "none")
_PRESENT_OF_CHOICE = torch.tensor([[False, True], [True, False], [True, True]])


def draw_masks(n: int, generator: torch.Generator, probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)) -> torch.Tensor:
    """``(n,)`` int64 choice ids (indices into :data:`MASK_CHOICES`), one per sample."""
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    p = torch.tensor(list(probs), dtype=torch.float64)
    return torch.multinomial(p, n, replacement=True, generator=generator)


def present_from_choices(choices: torch.Tensor) -> torch.Tensor:
    """Choice ids -> ``(n, 2)`` bool presence mask, columns [rgb, depth]."""
    return _PRESENT_OF_CHOICE[choices]


@dataclass
class BatchPlan:
    """How one loaded batch becomes the student's batch and its losses (all tensors on the CPU)."""

    source: torch.Tensor  # (N,) int64: the loaded sample each student row shows
    present: torch.Tensor  # (N, 2) bool: modalities the student sees, columns [rgb, depth]
    supervised: torch.Tensor  # (N,) bool: row gets OHEM cross-entropy against its ground truth
    pseudo: torch.Tensor  # (N,) bool: row gets cross-entropy against the teacher's hard label

    def teacher_rows(self) -> torch.Tensor:
        """Loaded samples the teacher must label (it sees them unmasked)."""
        return torch.unique(self.source[self.pseudo])

    def __len__(self) -> int:
        return int(self.source.numel())


def plan_batch(
    framework: str,
    n_labeled: int,
    n_unlabeled: int,
    generator: torch.Generator,
    probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
    *,
    mask: bool = False,
) -> BatchPlan:
    """The student batch of ``framework`` for ``n_labeled + n_unlabeled`` loaded samples.

    ``mask`` (cps only): draw a per-sample modality mask for every row, as modality_dropout does.
    """
    if mask and framework != "cps":
        raise ValueError(f"mask=True is for framework 'cps', not {framework!r} (its masking is fixed)")
    lab = torch.arange(n_labeled)
    unl = torch.arange(n_labeled, n_labeled + n_unlabeled)
    if framework == "supervised":
        n = n_labeled
        return BatchPlan(lab, torch.ones(n, 2, dtype=torch.bool), torch.ones(n, dtype=torch.bool),
                         torch.zeros(n, dtype=torch.bool))
    if framework == "modality_dropout":
        n = n_labeled
        present = present_from_choices(draw_masks(n, generator, probs))
        return BatchPlan(lab, present, torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    if framework == "mean_teacher":
        n = n_labeled + n_unlabeled
        sup = torch.arange(n) < n_labeled
        return BatchPlan(torch.cat([lab, unl]), torch.ones(n, 2, dtype=torch.bool), sup, ~sup)
    if framework == "m3l":
        # [labeled (clean) | labeled copy (masked) | unlabeled (masked)]  (paper A.3)
        source = torch.cat([lab, lab, unl])
        n = len(source)
        masked = present_from_choices(draw_masks(n_labeled + n_unlabeled, generator, probs))
        present = torch.cat([torch.ones(n_labeled, 2, dtype=torch.bool), masked])
        sup = torch.arange(n) < 2 * n_labeled
        return BatchPlan(source, present, sup, torch.ones(n, dtype=torch.bool))
    if framework == "cps":
        # One row per loaded sample (the other network's prediction of the row is its pseudo-label).
        n = n_labeled + n_unlabeled
        present = present_from_choices(draw_masks(n, generator, probs)) if mask else torch.ones(n, 2, dtype=torch.bool)
        sup = torch.arange(n) < n_labeled
        return BatchPlan(torch.arange(n), present, sup, torch.ones(n, dtype=torch.bool))
    raise ValueError(f"unknown framework {framework!r}")
