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
from timm.models.pvt_v2 import PyramidVisionTransformerV2, checkpoint_filter_fn

MODALITIES = ("rgb", "depth")
TOKEN_INITS = ("trunc_normal", "randn")

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
    """The one model class: Linear Fusion, and uni-modal SegFormer as configuration."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        m = len(config.modalities)
        arch = BACKBONES[config.backbone]
        self.encoder = PyramidVisionTransformerV2(
            in_chans=3,
            num_classes=0,
            mlp_ratios=(4, 4, 4, 4),
            sr_ratios=(8, 4, 2, 1),
            qkv_bias=True,
            drop_path_rate=config.drop_path_rate,
            **arch,
        )
        for name, module in list(self.encoder.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.LayerNorm):
                    setattr(module, child_name, ModalityLayerNorm.from_layernorm(child, m, eps=config.layernorm_eps))
        for stage in self.encoder.stages:
            for block in stage.blocks:
                block.attn.proj_drop = LinearFusion(config.fusion_alpha, m, block.attn.proj_drop)
        dims = tuple(arch["embed_dims"])
        self.missing_token = nn.Parameter(torch.zeros(dims[0])) if config.missing_token else None
        if self.missing_token is not None:
            if config.token_init == "randn":  # the reference: torch.randn(dim)
                with torch.no_grad():
                    self.missing_token.copy_(torch.randn(dims[0]))
            else:
                nn.init.trunc_normal_(self.missing_token, std=0.02)
        self.decoder = SegFormerHead(dims, config.decoder_dim, config.num_classes, config.decoder_dropout)
        # Ensemble weights (paper Eq. 6), trained; softmax keeps them a convex combination.
        self.ensemble_logits = nn.Parameter(torch.zeros(m)) if m == 2 else None

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
            ``{"ensemble", <modality>...}`` logits, each (B, C, H, W).
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

        feats = self.encode(x, keep)
        logits = self.decoder(feats)
        branches = dict(zip(self.modalities, logits.chunk(len(self.modalities), 0)))
        if len(self.modalities) == 1:
            ensemble = logits
        else:
            # The ensemble trains only its weights (the reference detaches the branches).
            wts = self.ensemble_weights().to(logits.dtype)
            ensemble = wts[0] * branches["rgb"].detach() + wts[1] * branches["depth"].detach()
        out = {"ensemble": ensemble, **branches}
        return {k: upsample_logits(v, (h, w), align_corners=self.config.align_corners) for k, v in out.items()}

    def encode(self, x: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
        """Run the shared encoder on modality-stacked input; returns 4 NCHW feature maps."""
        enc = self.encoder
        x = enc.patch_embed(x)  # (M*B, H/4, W/4, C), already normalised
        if self.missing_token is not None:
            token = self.missing_token.to(x.dtype).view(1, 1, 1, -1)
            x = torch.where(keep[:, None, None, None], x, token)
        feats = []
        for stage in enc.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups for the optimizer.

        ``encoder``: shared encoder weights. ``encoder_norm``: every LayerNorm
        affine, biases, the missing token and the ensemble weights (no weight
        decay). ``decoder``: the decode head.
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
        every modality slot. The load is strict apart from parameters that do
        not exist in an ImageNet encoder (token, ensemble, decoder).
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
        return {"loaded": sorted(fixed), "new": ["missing_token", "ensemble_logits", "decoder.*"]}


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
