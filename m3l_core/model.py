"""Linear Fusion SegFormer (M3L paper, Section 3.2) on timm's MiT encoder.

One shared SegFormer MiT encoder serves both modalities. Both branches run in a
single batched pass: the inputs are stacked ``[rgb; depth]`` on the batch axis,
and every LayerNorm applies its own affine parameters per modality. After every
attention layer the two branches are mixed linearly (:class:`LinearFusion`).
One SegFormer all-MLP decoder predicts per branch, and a trained softmax weight
ensembles the two predictions.

A missing modality is declared per sample through ``present``. With
``missing_token`` its stage-1 tokens are replaced by one learned token (the M3L
student and the robot at test time); without, its input is zeroed (the paper's
baselines). Either way, the values of a missing input never reach the output.

The paper's other fusions are configurations of the same class (``ModelConfig.fusion``,
m3l_core/fusion.py, docs/baselines.md): TokenFusion on the same shared encoder, and URN with two
encoders whose features are averaged.

The model knows nothing about losses, labels or random masking.

``align_corners``, ``layernorm_eps``, ``token_init`` and ``freeze_bn`` reproduce the authors'
reference code exactly when set to its values (the paper configs do); their defaults keep the
project's behaviour, so older checkpoints load unchanged (docs/reference_deviations.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.pvt_v2 import checkpoint_filter_fn

from m3l_core.fusion import LinearFusion, TokenFusion, mean_over_present, scores_per_sample
from m3l_core.mit import BACKBONES, ModalityLayerNorm, build_mit_encoder

__all__ = ["BACKBONES", "FUSIONS", "MODALITIES", "LinearFusion", "LinearFusionSegFormer", "ModalityLayerNorm",
           "ModelConfig", "SegFormerHead", "count_parameters", "upsample_logits"]

MODALITIES = ("rgb", "depth")
TOKEN_INITS = ("trunc_normal", "randn")
# How the two modalities meet (m3l_core/fusion.py, docs/baselines.md): Linear Fusion (the paper's
# model), TokenFusion and URN (the paper's Table 4/5 baselines).
FUSIONS = ("linear", "tokenfusion", "urn")

@dataclass
class ModelConfig:
    backbone: str = "mit_b2"
    num_classes: int = 13
    modalities: tuple[str, ...] = MODALITIES  # one entry = uni-modal SegFormer baseline
    fusion_alpha: float = 0.8  # fixed, tuned on validation in the paper (Table 6)
    decoder_dim: int = 256  # the reference uses 256, not SegFormer's 768
    missing_token: bool = True  # learned token for a missing modality; False = zero input
    drop_path_rate: float = 0.1
    decoder_dropout: float = 0.1
    # Reference-exact options (docs/reference_deviations.md). The defaults are the project's
    # behaviour, so checkpoints written before these fields existed load unchanged; the paper
    # configs switch all four to the reference's values.
    align_corners: bool = False  # final logit upsampling (model, evaluator, Segmenter); reference: True
    layernorm_eps: float | None = None  # None: timm's (1e-5 patch-embed/SR norms, 1e-6 others); reference: 1e-6
    token_init: str = "trunc_normal"  # missing token: trunc_normal std 0.02 (project) | randn std 1 (reference)
    freeze_bn: bool = False  # decoder BatchNorm stays in eval mode while training; reference: True
    # Baselines as configuration (docs/baselines.md). Checkpoints written before these fields
    # existed have no "fusion" key and load as "linear".
    fusion: str = "linear"  # linear (LF) | tokenfusion (TF) | urn (two encoders, averaged features)
    tokenfusion_threshold: float = 0.02  # TF: a token whose score is below this is substituted (reference: 0.02)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if not self.modalities or any(m not in MODALITIES for m in self.modalities) or \
                len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"model.modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        self.modalities = tuple(m for m in MODALITIES if m in self.modalities)
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.fusion_alpha <= 1.0:
            raise ValueError(f"model.fusion_alpha must be in [0, 1], got {self.fusion_alpha}")
        if self.layernorm_eps is not None and not 0.0 < self.layernorm_eps < 1.0:
            raise ValueError(f"model.layernorm_eps must be in (0, 1) or null, got {self.layernorm_eps}")
        if self.token_init not in TOKEN_INITS:
            raise ValueError(f"model.token_init must be one of {TOKEN_INITS}, got {self.token_init!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.fusion != "linear" and len(self.modalities) != 2:
            raise ValueError(f"model.fusion={self.fusion!r} needs both modalities {MODALITIES}, "
                             f"got model.modalities={list(self.modalities)}")
        if not 0.0 <= self.tokenfusion_threshold <= 1.0:
            raise ValueError(f"model.tokenfusion_threshold must be in [0, 1], got {self.tokenfusion_threshold}")

    @property
    def heads(self) -> tuple[str, ...]:
        """The outputs that are trained: URN has one decoder and one prediction; LF and TF
        predict per branch and ensemble; a uni-modal model predicts its one modality."""
        if self.fusion == "urn":
            return ("ensemble",)
        if len(self.modalities) == 1:
            return self.modalities
        return ("ensemble",) + self.modalities

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config field(s): {sorted(unknown)}")
        return cls(**d)


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder: project, upsample to 1/4, fuse, classify."""

    def __init__(self, in_dims: tuple[int, ...], dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_dims), dim, 1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        outs = []
        for f, proj in zip(feats, self.proj):
            y = proj(f.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(f.shape[0], -1, *f.shape[-2:])
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False) if y.shape[-2:] != size else y)
        # SegFormer concatenates deepest first.
        x = self.fuse(torch.cat(outs[::-1], dim=1))
        return self.classifier(self.dropout(x))


class LinearFusionSegFormer(nn.Module):
    """The one model class: Linear Fusion, and the paper's baselines as configuration.

    ``config.fusion`` picks how the branches meet (m3l_core/fusion.py, docs/baselines.md):

    - ``linear``: one weight-shared encoder, both branches in one batched pass, attention
      outputs mixed in every block; one prediction per branch plus the trained ensemble. With
      one modality it is the uni-modal SegFormer.
    - ``tokenfusion``: the same shared encoder and batched pass, with TokenFusion's scoring and
      token substitution in every block instead of the linear mix; also returns
      ``token_scores`` for the L1 sparsity loss.
    - ``urn``: two encoders that share nothing (``encoder`` for RGB, ``depth_encoder``), run one
      after the other (the two-encoder baseline by definition, about 2x the parameters); each
      stage's features are averaged over the modalities present per sample, one decoder
      predicts ``ensemble`` only. A missing modality is left out of the mean, so URN has no
      learned token (``missing_token`` is ignored).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        m = len(config.modalities)
        arch = BACKBONES[config.backbone]
        urn = config.fusion == "urn"
        # URN: one single-modality encoder per modality; otherwise one shared by all branches.
        enc = dict(backbone=config.backbone, drop_path_rate=config.drop_path_rate, layernorm_eps=config.layernorm_eps)
        self.encoder = build_mit_encoder(num_modalities=1 if urn else m, **enc,
                                         fusion_alpha=config.fusion_alpha if config.fusion == "linear" else None)
        self.depth_encoder = build_mit_encoder(num_modalities=1, **enc) if urn else None
        dims = tuple(arch["embed_dims"])
        self.missing_token = nn.Parameter(torch.zeros(dims[0])) if config.missing_token and not urn else None
        if self.missing_token is not None:
            if config.token_init == "randn":  # the reference: torch.randn(dim)
                with torch.no_grad():
                    self.missing_token.copy_(torch.randn(dims[0]))
            else:
                nn.init.trunc_normal_(self.missing_token, std=0.02)
        self.decoder = SegFormerHead(dims, config.decoder_dim, config.num_classes, config.decoder_dropout)
        # Ensemble weights (paper Eq. 6), trained; softmax keeps them a convex combination.
        self.ensemble_logits = nn.Parameter(torch.zeros(m)) if m == 2 and not urn else None
        self.token_fusion = TokenFusion(dims, config.tokenfusion_threshold) if config.fusion == "tokenfusion" else None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def train(self, mode: bool = True) -> "LinearFusionSegFormer":
        """As ``nn.Module.train``; with ``freeze_bn`` the decoder BatchNorm stays in eval mode.

        Frozen BatchNorm (the reference's ``freeze_bn: True``) normalises with its
        running statistics and never updates them; its affine weights still train.
        """
        super().train(mode)
        if mode and self.config.freeze_bn:
            for mod in self.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        return self

    def ensemble_weights(self) -> torch.Tensor:
        return self.ensemble_logits.softmax(0)

    def forward(
        self,
        rgb: torch.Tensor | None,
        depth: torch.Tensor | None,
        present: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Segment a batch.

        Args:
            rgb: (B, 3, H, W) normalised RGB, or None for a depth-only model.
            depth: (B, 1, H, W) normalised depth, or None for an RGB-only model.
            present: (B, 2) bool, columns [rgb, depth]; None means all present.

        Returns:
            ``{"ensemble", <modality>...}`` logits, each (B, C, H, W) (URN: ``ensemble`` only);
            TF adds ``token_scores`` (B, K).
        """
        inputs = {"rgb": rgb, "depth": depth}
        ref = next(inputs[m] for m in self.modalities if inputs[m] is not None) if any(
            inputs[m] is not None for m in self.modalities) else None
        if ref is None:
            raise ValueError(f"model needs an input for at least one of {self.modalities}")
        b, _, h, w = ref.shape
        if present is None:
            present = torch.ones(b, 2, dtype=torch.bool, device=ref.device)
        present = present.to(device=ref.device, dtype=torch.bool)
        if present.shape != (b, 2):
            raise ValueError(f"present must be (B, 2) = ({b}, 2), got {tuple(present.shape)}")

        xs, keep = [], []
        for name in self.modalities:
            x = inputs[name]
            col = present[:, MODALITIES.index(name)]
            if x is None:
                x = ref.new_zeros(b, 3, h, w)
                col = torch.zeros_like(col)
            elif x.shape[0] != b or x.shape[-2:] != (h, w):
                raise ValueError(f"{name} input must be ({b}, C, {h}, {w}), got {tuple(x.shape)}")
            xs.append(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
            keep.append(col)
        x = torch.cat(xs, 0)
        keep = torch.cat(keep, 0)
        if self.missing_token is None:
            # Baselines: a missing modality is an all-zero input (normalised space).
            x = torch.where(keep[:, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))

        feats, scores = self._encode(x, keep)
        logits = self.decoder(feats)
        if self.config.fusion == "urn":
            out = {"ensemble": logits}  # one decoder on the fused features: one prediction
        else:
            branches = dict(zip(self.modalities, logits.chunk(len(self.modalities), 0)))
            if len(self.modalities) == 1:
                ensemble = logits
            else:
                # The ensemble trains only its weights (the reference detaches the branches).
                wts = self.ensemble_weights().to(logits.dtype)
                ensemble = wts[0] * branches["rgb"].detach() + wts[1] * branches["depth"].detach()
            out = {"ensemble": ensemble, **branches}
        out = {k: upsample_logits(v, (h, w), align_corners=self.config.align_corners) for k, v in out.items()}
        if scores is not None:
            out["token_scores"] = scores  # TF: (B, K) in [0, 1], for the L1 sparsity loss; not upsampled
        return out

    def encode(self, x: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
        """Modality-stacked input -> the 4 NCHW feature maps the decoder sees.

        LF/TF: the shared encoder's features of every branch (still stacked). URN: per stage,
        the mean of the two encoders' features over the modalities present in each sample.
        """
        return self._encode(x, keep)[0]

    def _encode(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if self.depth_encoder is None:
            feats, scores = self.encoder_features(self.encoder, x, keep)
            return feats, (scores_per_sample(scores) if self.token_fusion is not None else None)
        # URN: each modality through its own encoder, one after the other.
        per_modality = [self.encoder_features(enc, part, k)[0] for enc, part, k in
                        zip((self.encoder, self.depth_encoder), x.chunk(2, 0), keep.chunk(2, 0))]
        keep = keep.view(2, -1)
        return [mean_over_present(list(stage_feats), keep) for stage_feats in zip(*per_modality)], None

    def encoder_features(self, enc: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One encoder on (modality-stacked) input: 4 NCHW feature maps and TF's per-block scores."""
        x = enc.patch_embed(x)  # (M*B, H/4, W/4, C), already normalised
        if self.missing_token is not None:
            token = self.missing_token.to(x.dtype).view(1, 1, 1, -1)
            x = torch.where(keep[:, None, None, None], x, token)
        feats, scores = [], []
        for i, stage in enumerate(enc.stages):
            if self.token_fusion is None:
                x = stage(x)
            else:
                x, stage_scores = self.token_fusion.run_stage(stage, x, i)
                scores.extend(stage_scores)
            feats.append(x)
        return feats, scores

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups for the optimizer.

        ``encoder``: encoder weights (URN: both encoders; TF: also its scorers' weights).
        ``encoder_norm``: every LayerNorm affine, biases, the missing token and the
        ensemble weights (no weight decay). ``decoder``: the decode head.
        """
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "encoder_norm": [], "decoder": []}
        norm_ids = {id(p) for mod in self.modules() if isinstance(mod, ModalityLayerNorm) for p in mod.parameters()}
        for name, p in self.named_parameters():
            if name.startswith("decoder."):
                groups["decoder"].append(p)
            elif id(p) in norm_ids or p.ndim <= 1 or name in ("missing_token", "ensemble_logits"):
                groups["encoder_norm"].append(p)
            else:
                groups["encoder"].append(p)
        return groups

    def load_pretrained(self, path: str) -> dict[str, list[str]]:
        """Load an official SegFormer ``mit_bX.pth`` ImageNet checkpoint from a path.

        Keys go through timm's own remapping; each LayerNorm is copied into
        every modality slot (URN: into both encoders, as the reference does). The load
        is strict apart from parameters that do not exist in an ImageNet encoder
        (token, ensemble, TF scorers, decoder).
        """
        state = _read_pretrained(path)
        return self.load_encoder_state(state, source=path)

    def load_encoder_state(self, state: dict[str, torch.Tensor], source: str = "<state dict>") -> dict[str, list[str]]:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state = checkpoint_filter_fn(state, self.encoder)
        own = self.encoder.state_dict()
        fixed = {}
        for k, v in state.items():
            if k in own and own[k].ndim == v.ndim + 1 and own[k].shape[1:] == v.shape:
                v = v.unsqueeze(0).expand_as(own[k]).clone()  # LayerNorm -> every modality slot
            fixed[k] = v
        missing = sorted(set(own) - set(fixed))
        unexpected = sorted(set(fixed) - set(own))
        bad_shape = sorted(k for k in fixed if k in own and own[k].shape != fixed[k].shape)
        if missing or unexpected or bad_shape:
            raise ValueError(
                f"{source}: not a SegFormer {self.config.backbone} encoder checkpoint: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                f"wrong shape {bad_shape[:5]}")
        self.encoder.load_state_dict(fixed, strict=True)
        new = [n for n, mod in (("missing_token", self.missing_token), ("ensemble_logits", self.ensemble_logits),
                                ("token_fusion.*", self.token_fusion)) if mod is not None] + ["decoder.*"]
        if self.depth_encoder is not None:  # URN: both encoders start from the same ImageNet weights
            self.depth_encoder.load_state_dict(fixed, strict=True)
        return {"loaded": sorted(fixed), "new": new}


def _read_pretrained(path: str) -> dict[str, torch.Tensor]:
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot read pretrained weights ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def upsample_logits(logits: torch.Tensor, size: tuple[int, int] | torch.Size, *, align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of ``(B, C, h, w)`` logits to ``size``: the ONE logit upsampling.

    Used by the model's own output, the evaluator (to the label size) and
    ``Segmenter`` (to the image size), always with the checkpoint's
    ``ModelConfig.align_corners`` (the reference uses True in both places).
    """
    size = tuple(int(v) for v in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
