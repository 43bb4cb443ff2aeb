"""The SegFormer MiT encoder on timm, with one LayerNorm parameter set per modality.

timm's ``PyramidVisionTransformerV2`` with MLP ratio 4 in every stage is exactly MiT; every
LayerNorm becomes a :class:`ModalityLayerNorm`, so one encoder can serve modality-stacked input
(``[rgb; depth]`` on the batch axis) with per-modality affine parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from m3l_core.fusion import LinearFusion

# Official SegFormer MiT numbers (Xie et al. 2021). MLP ratio 4 everywhere is
# what makes timm's PVTv2 exactly MiT. "tiny" exists for fast tests.
BACKBONES: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8)),
    "mit_b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3), num_heads=(1, 2, 5, 8)),
    "mit_b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3), num_heads=(1, 2, 5, 8)),
    "mit_b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), num_heads=(1, 2, 5, 8)),
}


class ModalityLayerNorm(nn.Module):
    """LayerNorm with one affine parameter set per modality.

    The input holds the modalities stacked on the batch axis (modality-major),
    so normalisation runs once without affine and the per-modality weight and
    bias broadcast over a ``(M, B, ...)`` view.
    """

    def __init__(self, dim: int, num_modalities: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_modalities, dim))
        self.bias = nn.Parameter(torch.zeros(num_modalities, dim))

    @classmethod
    def from_layernorm(cls, ln: nn.LayerNorm, num_modalities: int, eps: float | None = None) -> "ModalityLayerNorm":
        """Copy ``ln`` into every modality slot; ``eps`` overrides its epsilon when given."""
        new = cls(ln.normalized_shape[0], num_modalities, eps=ln.eps if eps is None else eps)
        with torch.no_grad():
            new.weight.copy_(ln.weight.detach().expand_as(new.weight))
            new.bias.copy_(ln.bias.detach().expand_as(new.bias))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.weight.shape[0]
        y = F.layer_norm(x, (self.dim,), eps=self.eps)
        y = y.view(m, -1, *y.shape[1:])
        shape = (m,) + (1,) * (y.dim() - 2) + (self.dim,)
        y = y * self.weight.view(shape).to(y.dtype) + self.bias.view(shape).to(y.dtype)
        return y.view(x.shape)

    def extra_repr(self) -> str:
        return f"{self.dim}, modalities={self.weight.shape[0]}, eps={self.eps}"


def build_mit_encoder(
    *,
    backbone: str,
    num_modalities: int,
    drop_path_rate: float,
    layernorm_eps: float | None = None,
    fusion_alpha: float | None = None,
) -> PyramidVisionTransformerV2:
    """timm's PVTv2 built as MiT with every LayerNorm per modality.

    ``fusion_alpha`` (Linear Fusion) installs :class:`~m3l_core.fusion.LinearFusion` in every
    block; None leaves the branches unmixed (uni-modal, TokenFusion, each URN encoder).
    """
    enc = PyramidVisionTransformerV2(
        in_chans=3,
        num_classes=0,
        mlp_ratios=(4, 4, 4, 4),
        sr_ratios=(8, 4, 2, 1),
        qkv_bias=True,
        drop_path_rate=drop_path_rate,
        **BACKBONES[backbone],
    )
    for module in list(enc.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(module, child_name, ModalityLayerNorm.from_layernorm(child, num_modalities, eps=layernorm_eps))
    if fusion_alpha is not None:
        for stage in enc.stages:
            for block in stage.blocks:
                block.attn.proj_drop = LinearFusion(fusion_alpha, num_modalities, block.attn.proj_drop)
    return enc
