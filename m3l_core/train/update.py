"""One optimizer step on one loaded batch, for every framework (the body of the trainer's loop).

The frameworks differ only in the :class:`~m3l_core.train.masking.BatchPlan` and in where the
pseudo-labels come from: the EMA teacher's ensemble (mean_teacher, m3l; computed here before the
student forward) or the other network of a :class:`~m3l_core.train.cps.CPSPair` (cps; computed
from the same forward by :func:`~m3l_core.train.cps.cross_pseudo_losses`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from m3l_core import distributed as dist_utils
from m3l_core.inference import autocast
from m3l_core.train.config import TrainConfig
from m3l_core.train.cps import cross_pseudo_losses
from m3l_core.train.ema import EMATeacher
from m3l_core.train.losses import compute_losses, pseudo_labels
from m3l_core.train.masking import BatchPlan

__all__ = ["train_step", "average_buffers", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss of a step is NaN or infinite (on any rank); the step was not applied."""


def _check_finite(loss: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLossError` on every rank if the loss is not finite on any rank."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if dist_utils.get_world_size() > 1:
        dist_utils.all_reduce_sum(bad)
    if bad.item() > 0:
        raise NonFiniteLossError(f"training loss is {float(loss.detach())}")


def _teacher_targets(
    teacher: EMATeacher | None,
    plan: BatchPlan,
    rgb: torch.Tensor,
    depth: torch.Tensor,
    label: torch.Tensor,
    *,
    cfg: TrainConfig,
    ignore_index: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The teacher's hard pseudo-labels of the loaded batch (or None) and the fraction of them kept."""
    one = torch.ones((), device=label.device)
    if not bool(plan.pseudo.any()):
        return None, one
    if teacher is None:
        raise ValueError(f"framework {cfg.framework!r} needs a teacher for its pseudo-labels")
    rows = plan.teacher_rows().to(label.device)
    with torch.no_grad(), autocast(label.device, cfg.precision):
        t_logits = teacher.module(rgb[rows], depth[rows])["ensemble"]
    pseudo = torch.full_like(label, ignore_index)
    pseudo[rows] = pseudo_labels(t_logits.float(), threshold=cfg.loss.pseudo_threshold, ignore_index=ignore_index)
    return pseudo, (pseudo[rows] != ignore_index).float().mean()


def train_step(
    net: torch.nn.Module,
    teacher: EMATeacher | None,
    batch: dict[str, Any],
    plan: BatchPlan,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: TrainConfig,
    heads: Sequence[str],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    ignore_index: int = 255,
    lambda_pseudo: float | None = None,
) -> dict[str, torch.Tensor]:
    """One optimizer step on one loaded batch; returns the detached losses.

    Keys: ``loss``, ``sup``, ``pseudo``, ``token_l1`` (see :func:`~m3l_core.train.losses.compute_losses`)
    and ``pseudo_kept`` (fraction of pseudo-label pixels above ``loss.pseudo_threshold``; 1 without any).
    ``lambda_pseudo`` defaults to ``cfg.loss.lambda_pseudo`` (``cfg.loss.cps_weight`` for cps; the
    loop passes the ramped-up value). A non-finite loss raises :class:`NonFiniteLossError` before
    anything is changed.
    """
    s = cfg.loss
    cps = cfg.framework == "cps"
    if lambda_pseudo is None:
        lambda_pseudo = s.cps_weight if cps else s.lambda_pseudo
    rgb = batch["rgb"].to(device, non_blocking=True)
    depth = batch["depth"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    pseudo, kept = (None, None) if cps else _teacher_targets(teacher, plan, rgb, depth, label, cfg=cfg,
                                                             ignore_index=ignore_index)
    src = plan.source.to(device)
    # BatchNorm running statistics change in the forward; kept to undo a step that is not applied.
    buffers = list(getattr(net, "module", net).buffers())
    saved = [b.detach().clone() for b in buffers]
    with autocast(device, cfg.precision):
        out = net(rgb[src], depth[src], plan.present.to(device))
    loss_kw = dict(heads=heads, ohem_thresh=s.ohem_thresh, ohem_min_kept=s.ohem_min_kept,
                   min_kept_basis=s.ohem_min_kept_basis, lambda_pseudo=lambda_pseudo, ignore_index=ignore_index,
                   token_l1=s.token_l1)
    if cps:
        losses = cross_pseudo_losses(out, plan, label, threshold=s.pseudo_threshold, **loss_kw)
    else:
        losses = {**compute_losses(out, plan, label, pseudo, **loss_kw), "pseudo_kept": kept}
    try:
        _check_finite(losses["loss"])
    except NonFiniteLossError:
        with torch.no_grad():
            for b, v in zip(buffers, saved):
                b.copy_(v)
        raise
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


def average_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over DDP ranks.

    Each rank updates them from its own shard; averaging after every step keeps
    the student, hence the EMA teacher and the validated weights, identical on
    every rank (DDP itself only averages gradients).
    """
    if world_size <= 1:
        return
    for b in module.buffers():
        if b.dtype.is_floating_point:
            dist_utils.all_reduce_sum(b.data)
            b.data.div_(world_size)
