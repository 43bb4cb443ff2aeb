"""AdamW with named parameter groups and a pure poly learning-rate schedule."""
from __future__ import annotations

import torch

from m3l_core.model import LinearFusionSegFormer


def get_lr(base_lr: float, step: int, max_iters: int, power: float = 0.9) -> float:
    """Poly decay without warm-up: ``base_lr * (1 - step / max_iters) ** power`` (0-based ``step``)."""
    if not 0 <= step <= max_iters:
        raise ValueError(f"step {step} outside [0, max_iters={max_iters}]")
    return base_lr * (1.0 - step / max_iters) ** power


def group_settings(
    *,
    lr: float,
    weight_decay: float,
    decoder_lr_mult: float = 3.0,
    norm_weight_decay: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Base lr and weight decay per named group of :meth:`LinearFusionSegFormer.param_groups`."""
    return {
        "encoder": {"lr": lr, "weight_decay": weight_decay},
        "encoder_norm": {"lr": lr, "weight_decay": norm_weight_decay},
        "decoder": {"lr": lr * decoder_lr_mult, "weight_decay": weight_decay},
    }


def build_optimizer(
    model: LinearFusionSegFormer,
    *,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    decoder_lr_mult: float = 3.0,
    norm_weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over every trainable parameter, one group per name, each remembering its ``base_lr``."""
    model = getattr(model, "module", model)
    settings = group_settings(lr=lr, weight_decay=weight_decay, decoder_lr_mult=decoder_lr_mult,
                              norm_weight_decay=norm_weight_decay)
    named = model.param_groups()
    if set(named) != set(settings):
        raise ValueError(f"model.param_groups() returned {sorted(named)}, expected {sorted(settings)}")
    groups = [
        {"name": name, "params": [p for p in named[name] if p.requires_grad], "base_lr": s["lr"], **s}
        for name, s in settings.items()
    ]
    grouped = sum(len(g["params"]) for g in groups)
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    if grouped != trainable:
        raise ValueError(f"param_groups() covers {grouped} of {trainable} trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def apply_group_settings(
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    weight_decay: float,
    decoder_lr_mult: float = 3.0,
    norm_weight_decay: float = 0.0,
) -> None:
    """Set every named group's ``base_lr`` and weight decay from the config.

    ``optimizer.load_state_dict`` restores the saved groups' settings; calling this after a
    resume makes ``--resume RUN --set optim.lr=...`` take effect (e.g. after a diverged step).
    """
    settings = group_settings(lr=lr, weight_decay=weight_decay, decoder_lr_mult=decoder_lr_mult,
                              norm_weight_decay=norm_weight_decay)
    for g in optimizer.param_groups:
        s = settings[g["name"]]
        g["base_lr"], g["weight_decay"] = s["lr"], s["weight_decay"]


def set_lr(optimizer: torch.optim.Optimizer, step: int, max_iters: int, power: float = 0.9) -> dict[str, float]:
    """Apply :func:`get_lr` to every group for ``step``; returns ``{group name: lr}``."""
    out = {}
    for g in optimizer.param_groups:
        g["lr"] = get_lr(g["base_lr"], step, max_iters, power)
        out[g.get("name", str(len(out)))] = g["lr"]
    return out
