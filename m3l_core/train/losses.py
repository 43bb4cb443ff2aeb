"""Losses: OHEM cross-entropy for ground truth, plain cross-entropy for hard pseudo-labels.

:func:`compute_losses` applies them to one student forward pass according to a
:class:`~m3l_core.train.masking.BatchPlan`, which says which rows get which loss, and adds
TokenFusion's L1 sparsity loss on its token scores when asked (``loss.token_l1``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from m3l_core.train.masking import BatchPlan

# How OHEM's min_kept is sized from the ``ohem_min_kept`` fraction:
# "supervised_rows": fraction x all pixels of the rows that get the supervised loss (the project);
# "labeled_batch": int(fraction x H x W) x the number of LOADED labeled samples (the reference's
# ``pixel_num``). They differ only for m3l, whose labeled rows appear twice (clean and masked),
# so the reference keeps at least 4 % of its supervised pixels where the project keeps 8 %.
MIN_KEPT_BASES = ("supervised_rows", "labeled_batch")


def min_kept_count(fraction: float, target: torch.Tensor, n_labeled: int, basis: str = "supervised_rows") -> int:
    """OHEM ``min_kept`` for the ``(N, H, W)`` supervised ``target`` of ``n_labeled`` loaded labeled samples."""
    if basis == "supervised_rows":
        return int(fraction * target.numel())
    if basis == "labeled_batch":
        return int(fraction * target.shape[-2] * target.shape[-1]) * int(n_labeled)
    raise ValueError(f"ohem min_kept basis must be one of {MIN_KEPT_BASES}, got {basis!r}")


def ohem_keep_mask(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    thresh: float = 0.7,
    min_kept: int = 0,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Which pixels OHEM trains on: ``(B, H, W)`` bool.

    Reference semantics (``OhemCrossEntropy2d`` of the SegFormer/TokenFusion
    code the paper builds on): among the non-ignored pixels, let ``p`` be the
    softmax probability of the ground-truth class. The threshold is ``thresh``,
    raised to the ``min_kept``-th smallest ``p`` when that is larger, and a
    pixel is kept when ``p <= threshold``. So every pixel the model is unsure
    about is kept, and at least the ``min_kept`` hardest ones. When
    ``min_kept`` reaches the number of valid pixels, all of them are kept.
    """
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0 or min_kept >= num_valid:
        return valid
    with torch.no_grad():
        prob = logits.detach().float().softmax(1)
        safe = torch.where(valid, target, torch.zeros_like(target))
        p = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        threshold = torch.tensor(float(thresh), dtype=p.dtype, device=p.device)
        if min_kept > 0:
            kth = p[valid].kthvalue(int(min_kept)).values
            threshold = torch.maximum(threshold, kth)
        return valid & (p <= threshold)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255,
                       **ohem: float) -> torch.Tensor:
    """Mean cross-entropy over the pixels :func:`ohem_keep_mask` keeps (0 if none is labeled).

    ``ohem`` are :func:`ohem_keep_mask`'s ``thresh`` and ``min_kept``.
    """
    keep = ohem_keep_mask(logits, target, ignore_index=ignore_index, **ohem)
    if not bool(keep.any()):
        return logits.float().sum() * 0.0  # keeps the graph (DDP) and yields zero gradients
    masked = torch.where(keep, target, torch.full_like(target, ignore_index))
    return F.cross_entropy(logits.float(), masked, ignore_index=ignore_index)


def pseudo_label_cross_entropy(logits: torch.Tensor, pseudo: torch.Tensor, *, ignore_index: int = 255,
                               dropped: bool | None = None) -> torch.Tensor:
    """Plain cross-entropy against hard pseudo-labels, averaged over ALL pixels.

    Pixels a confidence threshold dropped (``ignore_index``, see :func:`pseudo_labels`) add zero
    but still count in the mean (FixMatch/UniMatch), so the loss shrinks with the kept fraction
    and is 0, not NaN, when nothing is kept. Without dropped pixels (the paper) it is the plain mean.
    ``dropped`` says whether ``pseudo`` holds any; None checks (a device sync), so callers that
    apply it to several heads check once.
    """
    if dropped is None:
        dropped = bool((pseudo == ignore_index).any())
    if not dropped:
        return F.cross_entropy(logits.float(), pseudo, ignore_index=ignore_index)
    return F.cross_entropy(logits.float(), pseudo, ignore_index=ignore_index, reduction="sum") / pseudo.numel()


def pseudo_weight(step: int, lambda_pseudo: float, rampup: int = 0) -> float:
    """Weight of the pseudo-label loss at ``step``.

    ``rampup = 0`` is the paper: ``lambda_pseudo`` from the first step. Otherwise
    the sigmoid ramp-up of Laine & Aila / Mean Teacher,
    ``lambda * exp(-5 (1 - t)^2)`` with ``t = min(step / rampup, 1)``, which
    keeps a teacher trained from scratch from teaching its first guesses.
    """
    if rampup <= 0:
        return lambda_pseudo
    t = min(step / rampup, 1.0)
    return lambda_pseudo * math.exp(-5.0 * (1.0 - t) ** 2)


def heads_for(modalities: Sequence[str]) -> tuple[str, ...]:
    """Output heads of a linear-fusion or uni-modal model: the ensemble and both branches (Eq. 7), or the branch.

    The trainer uses ``ModelConfig.heads``, which also knows the other fusions (URN: the ensemble only).
    """
    return ("ensemble", *modalities) if len(modalities) == 2 else tuple(modalities)


def pseudo_labels(teacher_logits: torch.Tensor, *, threshold: float = 0.0, ignore_index: int = 255) -> torch.Tensor:
    """Hard pseudo-labels: the argmax of the teacher's ensemble logits.

    ``threshold`` > 0 (beyond the paper): pixels whose softmax max-probability is below it become
    ``ignore_index``; at or above it they are kept. 0 keeps every pixel (the paper).
    """
    labels = teacher_logits.argmax(1)
    if threshold > 0:
        confidence = teacher_logits.float().softmax(1).amax(1)
        labels = torch.where(confidence >= threshold, labels, torch.full_like(labels, ignore_index))
    return labels


def compute_losses(
    outputs: Mapping[str, torch.Tensor],
    plan: BatchPlan,
    labels: torch.Tensor,
    pseudo: torch.Tensor | None,
    *,
    heads: Sequence[str],
    ohem_thresh: float = 0.7,
    ohem_min_kept: float = 0.08,
    lambda_pseudo: float = 1.0,
    ignore_index: int = 255,
    min_kept_basis: str = "supervised_rows",
    token_l1: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The training loss of one student forward pass.

    Args:
        outputs: student logits per head, rows in ``plan`` order.
        labels: ``(B_loaded, H, W)`` ground truth of the loaded batch (ignore for unlabeled).
        pseudo: ``(B_loaded, H, W)`` teacher pseudo-labels of the loaded batch, or None.
        ohem_min_kept: fraction OHEM keeps at least, of the pixels given by ``min_kept_basis``
            (:data:`MIN_KEPT_BASES`).
        token_l1: weight of TokenFusion's sparsity loss, the mean of ``outputs["token_scores"]``
            (used when > 0 and the output has token scores).

    Returns ``{"loss", "sup", "pseudo", "token_l1"}``: ``loss = sup + lambda_pseudo * pseudo
    + token_l1 * mean(token_scores)``, ``sup`` and ``pseudo`` averaged over ``heads``,
    ``"token_l1"`` the unweighted mean score (0 without token scores).
    """
    ref = outputs[heads[0]]
    zero = ref.float().sum() * 0.0
    sup_rows = plan.supervised.nonzero().flatten().to(ref.device)
    sup = zero
    if sup_rows.numel():
        target = labels[plan.source[plan.supervised].to(labels.device)].to(ref.device)
        n_labeled = int(torch.unique(plan.source[plan.supervised]).numel())
        min_kept = min_kept_count(ohem_min_kept, target, n_labeled, min_kept_basis)
        sup = sum(ohem_cross_entropy(outputs[h][sup_rows], target, thresh=ohem_thresh, min_kept=min_kept,
                                     ignore_index=ignore_index) for h in heads) / len(heads)
    pse = zero
    pse_rows = plan.pseudo.nonzero().flatten().to(ref.device)
    if pse_rows.numel():
        if pseudo is None:
            raise ValueError("the batch plan asks for a pseudo-label loss but no pseudo-labels were given")
        target = pseudo[plan.source[plan.pseudo].to(pseudo.device)].to(ref.device)
        dropped = bool((target == ignore_index).any())  # once for every head
        pse = sum(pseudo_label_cross_entropy(outputs[h][pse_rows], target, ignore_index=ignore_index, dropped=dropped)
                  for h in heads) / len(heads)
    loss = sup + lambda_pseudo * pse
    sparsity = zero
    if token_l1 > 0 and "token_scores" in outputs:
        sparsity = outputs["token_scores"].float().mean()
        loss = loss + token_l1 * sparsity
    return {"loss": loss, "sup": sup, "pseudo": pse, "token_l1": sparsity}
