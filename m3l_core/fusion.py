"""How the two modality branches meet: Linear Fusion, TokenFusion and URN (``ModelConfig.fusion``).

All three are configurations of the one model, ``m3l_core.model.LinearFusionSegFormer``; this
module holds only the mechanisms (docs/baselines.md says how each is built and where it deviates
from the authors' reference code).

- ``linear`` (the paper's LF, Eq. 5): :class:`LinearFusion` mixes the attention outputs of the
  two branches of the weight-shared encoder in every block.
- ``tokenfusion`` (TF, Wang et al. 2022; the paper's Table 4/5 baseline): a per-stage
  :class:`TokenScorer` scores every token of each branch before every block; the block's
  attention output is weighted by the score and, where a branch's score is below the
  threshold, replaced by the other branch's token at the same position (:func:`token_exchange`).
- ``urn`` (Unified Representation Network): two encoders that share nothing; the features of
  each stage are averaged over the modalities present in each sample (:func:`mean_over_present`)
  and one decoder predicts from the mean.

Every tensor here holds the modalities stacked on the batch axis, modality-major
(``[rgb; depth]``), as the model's single batched pass produces them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LinearFusion(nn.Module):
    """Mixes the attention outputs of the two branches (paper Eq. 5).

    ``a_m' = alpha * a_m + (1 - alpha) * a_other``. Installed in place of the
    attention's output dropout, i.e. after the output projection and before the
    residual add, as in the reference implementation. This is the one place
    where the branches meet inside the encoder.
    """

    def __init__(self, alpha: float, num_modalities: int, dropout: nn.Module) -> None:
        super().__init__()
        self.alpha = alpha
        self.num_modalities = num_modalities
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        if self.num_modalities == 1:
            return x
        x = x.view(2, -1, *x.shape[1:])
        return (self.alpha * x + (1.0 - self.alpha) * x.flip(0)).view(-1, *x.shape[2:])

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class TokenScorer(nn.Module):
    """Per-token importance score in [0, 1], one small MLP per modality (TF's ``PredictorLG``).

    The reference has one scorer per stage, shared by the blocks of that stage, each with one
    MLP per modality ending in two logits; the score is the softmax probability of the first.
    (The reference applies ``LogSoftmax`` then ``softmax``, which is the same softmax.)
    """

    def __init__(self, dim: int, num_modalities: int = 2) -> None:
        super().__init__()
        self.nets = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, dim),
                nn.GELU(),
                nn.Linear(dim, dim // 2),
                nn.GELU(),
                nn.Linear(dim // 2, dim // 4),
                nn.GELU(),
                nn.Linear(dim // 4, 2),
            )
            for _ in range(num_modalities)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(M*B, N, C)`` modality-stacked tokens -> ``(M*B, N)`` scores."""
        parts = x.chunk(len(self.nets), 0)
        return torch.cat([net(p).softmax(-1)[..., 0] for net, p in zip(self.nets, parts)], 0)


def token_exchange(x: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """TF's substitution: a token whose score is below ``threshold`` takes the other branch's token.

    ``x`` is ``(2*B, N, C)`` (already score-weighted), ``scores`` ``(2*B, N)``. A score exactly at
    the threshold keeps its own token (the reference: ``mask >= threshold`` keeps).
    """
    pair = x.view(2, -1, *x.shape[1:])
    low = (scores.view(2, -1, scores.shape[1]) < threshold).unsqueeze(-1)
    return torch.where(low, pair.flip(0), pair).view(x.shape)


class TokenFusion(nn.Module):
    """TokenFusion for the weight-shared two-branch encoder: scorers and the per-stage pass.

    In every block, as in the reference: the scores come from the block's input tokens (the
    current block, not the previous one), the attention output is multiplied by them, and
    :func:`token_exchange` substitutes low-score tokens, after the attention's output projection
    and dropout and before the residual add. The MLP half of the block is untouched.
    """

    def __init__(self, dims: tuple[int, ...], threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.scorers = nn.ModuleList(TokenScorer(d) for d in dims)

    def run_stage(self, stage: nn.Module, x: torch.Tensor, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """timm ``PyramidVisionTransformerStage.forward`` with the TF step in every block.

        Returns the stage's NCHW output and the ``(2*B, N)`` scores of each of its blocks.
        """
        if stage.downsample is not None:
            x = stage.downsample(x)
        b, h, w, c = x.shape
        size = (h, w)
        x = x.reshape(b, -1, c)
        scores = []
        for blk in stage.blocks:
            s = self.scorers[index](x)
            a = blk.attn(blk.norm1(x), size) * s.unsqueeze(-1).to(x.dtype)
            x = x + blk.drop_path1(token_exchange(a, s, self.threshold))
            x = x + blk.drop_path2(blk.mlp(blk.norm2(x), size))
            scores.append(s)
        x = stage.norm(x)
        return x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(), scores

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


def scores_per_sample(scores: list[torch.Tensor]) -> torch.Tensor:
    """Every block's ``(2*B, N)`` scores -> ``(B, K)``: per sample, both branches of every block."""
    rows = [s.view(2, -1, s.shape[1]).transpose(0, 1).reshape(s.shape[0] // 2, -1) for s in scores]
    return torch.cat(rows, 1)


def mean_over_present(feats: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """URN's fusion: per sample, the mean of the modalities' features over those present.

    ``feats``: one ``(B, C, H, W)`` map per modality; ``keep``: ``(M, B)`` bool. A missing
    modality's features are selected away (``torch.where``, so not even a NaN from its input
    gets through). A sample with no modality present gets all-zero features, so the decoder
    predicts its input-independent prior for it.
    """
    total = torch.zeros_like(feats[0])
    for f, k in zip(feats, keep):
        total = total + torch.where(k.view(-1, 1, 1, 1), f, torch.zeros((), dtype=f.dtype, device=f.device))
    count = keep.sum(0).clamp(min=1).to(total.dtype)
    return total / count.view(-1, 1, 1, 1)
