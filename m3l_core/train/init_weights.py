"""Start a model from an M3L-ROS checkpoint (``model.init``), optionally on another class set.

Every tensor must match by name and shape, except the learned missing-modality token, which may
exist on one side only. For fine-tuning to new classes, ``reset=("classifier",)`` leaves the final
classifier fresh when the checkpoint's class names differ from the dataset's; ``"missing_token"``
always leaves the token fresh. What was left fresh is logged and returned.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from safetensors.torch import load_file as st_load_file

import torch

from m3l_core.checkpoint import CheckpointError, read_metadata
from m3l_core.data.folder import ClassInfo
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.train.config import ConfigError, TrainConfig
from m3l_core.train.steps import TAG_INIT, derive_seed

log = logging.getLogger(__name__)

CLASSIFIER_PREFIX = "decoder.classifier."  # the 1x1 conv from decoder features to class logits
TOKEN_KEY = "missing_token"
# May differ between a checkpoint and the model it initialises (e.g. a supervised run without the token).
_OPTIONAL_KEYS = (TOKEN_KEY,)


def init_from_checkpoint(
    model: LinearFusionSegFormer,
    path: str | Path,
    *,
    reset: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
) -> list[str]:
    """Copy the weights of ``path`` into ``model``; returns the parameter/buffer names left fresh.

    ``reset``: ``"classifier"`` skips the classifier when the checkpoint's class names differ from
    ``class_names`` (or its classifier shape differs from the model's); ``"missing_token"`` skips
    the token. Raises :class:`CheckpointError` naming the file when anything else does not fit.
    """
    path = str(path)
    meta = read_metadata(path)  # a readable M3L-ROS checkpoint, or a CheckpointError naming the file
    state = st_load_file(path)
    own = model.state_dict()
    skipped: dict[str, str] = {}
    ckpt_names = list(meta.get("class_names") or [])
    if "classifier" in reset:
        shapes_differ = any(k in own and state[k].shape != own[k].shape for k in state if k.startswith(CLASSIFIER_PREFIX))
        names_differ = class_names is not None and list(class_names) != ckpt_names
        if shapes_differ or names_differ:
            why = (f"checkpoint classes ({len(ckpt_names)}) {ckpt_names[:6]}{'...' if len(ckpt_names) > 6 else ''} "
                   f"differ from the dataset's ({len(class_names or [])})")
            skipped.update({k: why for k in own if k.startswith(CLASSIFIER_PREFIX)})
        else:
            log.info("model.init: %s has the dataset's classes; classifier loaded, not reset", path)
    if "missing_token" in reset and TOKEN_KEY in own:
        skipped[TOKEN_KEY] = "model.init_reset lists missing_token"
    state = {k: v for k, v in state.items() if k not in skipped}
    unexpected = sorted(k for k in state if k not in own and k not in _OPTIONAL_KEYS)
    missing = sorted(k for k in own if k not in state and k not in _OPTIONAL_KEYS and k not in skipped)
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in state if k in own and state[k].shape != own[k].shape)
    if unexpected or missing or shapes:
        hint = ""
        if shapes and all(s.startswith(CLASSIFIER_PREFIX) for s in shapes):
            hint = ("; the class set differs: fine-tune with --set 'model.init_reset=[classifier]' to start "
                    "the classifier fresh")
        raise CheckpointError(f"{path}: does not fit the configured model (backbone, modalities, classes, "
                              f"decoder_dim): missing {missing[:4]}, unexpected {unexpected[:4]}, "
                              f"shapes {shapes[:4]}{hint}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    for k, why in skipped.items():
        log.info("model.init: reset %s (%s)", k, why)
    return sorted(k for k in own if k not in state)


def build_student(
    cfg: TrainConfig,
    classes: ClassInfo,
    *,
    resume: bool,
    member: int = 0,
) -> tuple[LinearFusionSegFormer, ModelConfig]:
    """The student with the same initial weights on every rank, from ImageNet and/or ``model.init``.

    ``member`` > 0 draws another initialisation from the same seed (the second network of cps);
    member 0 is the one network of every other framework.
    """
    try:
        model_cfg = cfg.model.build(classes.num_classes)
    except ValueError as e:
        raise ConfigError(f"{e} ({cfg.data.root})", key="model.num_classes") from e
    torch.manual_seed(derive_seed(cfg.seed, TAG_INIT) if member == 0 else derive_seed(cfg.seed, TAG_INIT, member))
    student = LinearFusionSegFormer(model_cfg)
    if cfg.model.pretrained and not resume:  # on resume the saved state replaces both
        student.load_pretrained(cfg.model.pretrained)
        log.info("loaded ImageNet encoder weights from %s", cfg.model.pretrained)
    if cfg.model.init and not resume:
        fresh = init_from_checkpoint(student, cfg.model.init, reset=cfg.model.init_reset, class_names=classes.names)
        log.info("initialised from %s%s", cfg.model.init, f" (kept fresh: {', '.join(fresh)})" if fresh else "")
    return student, model_cfg
