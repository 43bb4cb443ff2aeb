"""CPS-Seg: cross pseudo supervision (Chen et al., CVPR 2021) on the project's SegFormer.

Two networks built from the same model config but initialised differently see the same rows.
Each is trained with the OHEM loss on the labeled rows and with plain cross-entropy against the
OTHER network's hard argmax (no gradient through it) on every row, labeled and unlabeled, as the
authors' CPS trainer (``harshm121/M3L``, ``src/semi_supervised/cps.py``) does::

    loss = sup_a + sup_b + cps_weight * (ce(a, argmax b) + ce(b, argmax a))

Why a module pair: both networks sit in one ``nn.Module``, so the ONE trainer keeps one DDP wrap,
one AdamW over both (same groups and poly schedule as the reference's two optimizers), one
backward, and saves both networks in its resumable state. The first network is the model that is
validated and exported.

The paper's CPS-Seg is uni-modal (Tables 3 and 9). On a two-modality model the pseudo-label is the
other network's ensemble and, like M3L's pseudo-label loss, it trains every head of ``heads``;
with ``loss.cps_modality_dropout`` both networks see the same per-sample masked rows.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from m3l_core.data.folder import ClassInfo
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.train.config import TrainConfig
from m3l_core.train.init_weights import build_student
from m3l_core.train.losses import compute_losses, pseudo_labels
from m3l_core.train.masking import BatchPlan

__all__ = ["CPSPair", "build_cps_pair", "cross_pseudo_losses"]


class CPSPair(nn.Module):
    """Two segmentation networks trained jointly; ``forward`` returns both outputs, first network first."""

    def __init__(self, first: LinearFusionSegFormer, second: LinearFusionSegFormer) -> None:
        super().__init__()
        self.nets = nn.ModuleList([first, second])

    @property
    def first(self) -> LinearFusionSegFormer:
        """The network that is validated, checkpointed and exported."""
        return self.nets[0]

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.first.modalities

    def forward(
        self,
        rgb: torch.Tensor | None,
        depth: torch.Tensor | None,
        present: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], ...]:
        return tuple(net(rgb, depth, present) for net in self.nets)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The networks' named groups merged, so one optimizer treats both like the single model."""
        groups: dict[str, list[nn.Parameter]] = {}
        for net in self.nets:
            for name, params in net.param_groups().items():
                groups.setdefault(name, []).extend(params)
        return groups


def build_cps_pair(cfg: TrainConfig, classes: ClassInfo, *, resume: bool) -> tuple[CPSPair, ModelConfig]:
    """Both networks from ``cfg.model``: the first with the seed every framework uses, the second with another.

    ImageNet weights (``model.pretrained``) or ``model.init`` go into both, as the reference builds
    both networks with the same pretrained encoder; their fresh parts still differ.
    """
    first, model_cfg = build_student(cfg, classes, resume=resume, member=0)
    second, _ = build_student(cfg, classes, resume=resume, member=1)
    return CPSPair(first, second), model_cfg


def cross_pseudo_losses(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    plan: BatchPlan,
    labels: torch.Tensor,
    *,
    threshold: float = 0.0,
    ignore_index: int = 255,
    **loss_kw: Any,
) -> dict[str, torch.Tensor]:
    """The loss of one forward of both networks; each term is summed over the two networks.

    ``outputs``: the two networks' logits per head, rows in ``plan`` order (one row per loaded
    sample). Each network's pseudo-label is the other's ``"ensemble"`` argmax, detached;
    ``threshold`` (``loss.pseudo_threshold``) ignores the other's unconfident pixels.
    ``loss_kw`` go to :func:`~m3l_core.train.losses.compute_losses` (``lambda_pseudo`` is the CPS weight).
    Adds ``"pseudo_kept"``: the fraction of pseudo-label pixels kept, over both networks.
    """
    if len(outputs) != 2:
        raise ValueError(f"cps needs the outputs of two networks, got {len(outputs)}")
    if not torch.equal(plan.source, torch.arange(len(plan))):
        raise ValueError("a cps batch plan has one row per loaded sample, in order")
    rows = plan.pseudo.nonzero().flatten()
    per, kept = [], []
    for own, other in zip(outputs, outputs[::-1]):
        target = pseudo_labels(other["ensemble"].detach(), threshold=threshold, ignore_index=ignore_index)
        kept.append((target[rows.to(target.device)] != ignore_index).float().mean())
        per.append(compute_losses(own, plan, labels, target, ignore_index=ignore_index, **loss_kw))
    losses = {k: per[0][k] + per[1][k] for k in per[0]}
    losses["pseudo_kept"] = torch.stack(kept).mean()
    return losses
