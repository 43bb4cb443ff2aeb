"""Run the authors' trained models: convert a reference checkpoint into an M3L-ROS checkpoint.

The reference implementation (github.com/harshm121/M3L, ``linearfusemaskedconsmixbatch`` for M3L,
``linearfuse`` for the supervised and mean-teacher baselines) keeps one module per layer and
modality (``ModuleParallel``, ``LayerNormParallel`` with ``ln_0`` = RGB and ``ln_1`` = depth).
This project runs both modalities through timm's MiT with per-modality LayerNorm slots
(slot 0 = RGB, slot 1 = depth). :func:`reference_key_map` lists, for a model config, every
reference tensor name and the project tensor (and slot) it fills::

    python -m m3l_core.convert_reference REF.pth --config config/train/stanford_m3l_1.yaml \\
        --out model.safetensors [--branch teacher] [--class-names names.txt] [--palette palette.json]

The file is read with ``torch.load(weights_only=True)`` only: a pickle that would run code is
refused. The state dict may sit at the top level or under ``model``, ``state_dict`` or
``model_state_dict`` (what the reference's training loop saves); a mean-teacher snapshot holds
``student.*`` and ``teacher.*`` copies, of which ``--branch`` picks one. Every project tensor is
filled exactly once; an unknown, missing or misshapen tensor is an error naming it. The output
carries the reference's inference settings (``align_corners``, LayerNorm eps 1e-6, min-max depth
over all pixels, cv2 nearest alignment), so ``Segmenter``, the evaluator and the ROS node run it
unchanged. Exit codes: 0 written, 1 conversion failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pickle
import struct
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from m3l_core.model import MODALITIES, LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing

log = logging.getLogger(__name__)

REFERENCE_LN_EPS = 1e-6
STATE_KEYS = ("model", "state_dict", "model_state_dict")  # where a training snapshot keeps the weights
BRANCHES = ("student", "teacher")
# Tensors the reference creates but never uses: the mask tokens of stages 2-4 (only stage 1 is masked).
UNUSED = tuple(f"encoder.patch_embed{k}.mask_token" for k in (2, 3, 4))
# May be absent from checkpoints of older PyTorch versions; has no effect on inference.
OPTIONAL = ("decoder.linear_fuse.bn.num_batches_tracked",)


class ConversionError(ValueError):
    """The reference file cannot be converted; the message names the file and the tensor."""


Target = tuple[str, "int | None"]  # project tensor name, modality slot (None: the whole tensor)


def reference_key_map(config: ModelConfig) -> dict[str, Target]:
    """Every reference tensor name of a model with ``config`` -> the project tensor (and slot) it fills."""
    model = LinearFusionSegFormer(replace(config, modalities=MODALITIES))
    own = model.state_dict()
    out: dict[str, Target] = {}

    def lin(ref: str, dst: str) -> None:  # a ModuleParallel-wrapped layer: weight and bias
        for p in ("weight", "bias"):
            out[f"{ref}.{p}"] = (f"{dst}.{p}", None)

    def norm(ref: str, dst: str) -> None:  # LayerNormParallel: ln_0 = RGB slot, ln_1 = depth slot
        for slot in range(len(MODALITIES)):
            for p in ("weight", "bias"):
                out[f"{ref}.ln_{slot}.{p}"] = (f"{dst}.{p}", slot)

    for s, stage in enumerate(model.encoder.stages, start=1):
        emb = "encoder.patch_embed" if s == 1 else f"encoder.stages.{s - 1}.downsample"
        lin(f"encoder.patch_embed{s}.proj.module", f"{emb}.proj")
        norm(f"encoder.patch_embed{s}.norm", f"{emb}.norm")
        for j, block in enumerate(stage.blocks):
            ref, dst = f"encoder.block{s}.{j}", f"encoder.stages.{s - 1}.blocks.{j}"
            norm(f"{ref}.norm1", f"{dst}.norm1")
            norm(f"{ref}.norm2", f"{dst}.norm2")
            for layer in ("q", "kv", "proj"):
                lin(f"{ref}.attn.{layer}.module", f"{dst}.attn.{layer}")
            if block.attn.sr is not None:
                lin(f"{ref}.attn.sr.module", f"{dst}.attn.sr")
                norm(f"{ref}.attn.norm", f"{dst}.attn.norm")
            lin(f"{ref}.mlp.fc1.module", f"{dst}.mlp.fc1")
            lin(f"{ref}.mlp.fc2.module", f"{dst}.mlp.fc2")
            lin(f"{ref}.mlp.dwconv.dwconv", f"{dst}.mlp.dwconv")
        norm(f"encoder.norm{s}", f"encoder.stages.{s - 1}.norm")
    if config.missing_token:
        out["encoder.patch_embed1.mask_token"] = ("missing_token", None)
    out["alpha"] = ("ensemble_logits", None)  # softmax(alpha) = [w_rgb, w_depth] in both
    for k in range(4):
        lin(f"decoder.linear_c{k + 1}.proj", f"decoder.proj.{k}")
    out["decoder.linear_fuse.conv.weight"] = ("decoder.fuse.0.weight", None)
    for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"decoder.linear_fuse.bn.{p}"] = (f"decoder.fuse.1.{p}", None)
    lin("decoder.linear_pred", "decoder.classifier")
    targets = {t for t, _ in out.values()}
    if targets != set(own):  # the map must cover the project model exactly
        raise AssertionError(f"reference map out of date: {sorted(set(own) ^ targets)[:5]}")
    return out


def to_reference_state(model: LinearFusionSegFormer) -> dict[str, torch.Tensor]:
    """The model's weights under the reference's names (the inverse of :func:`convert_state`)."""
    state = model.state_dict()
    return {ref: (state[dst] if slot is None else state[dst][slot]).clone()
            for ref, (dst, slot) in reference_key_map(model.config).items()}


def convert_state(ref: Mapping[str, torch.Tensor], config: ModelConfig, *, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """A reference state dict -> the project's state dict for ``config``; every tensor filled exactly once."""
    if tuple(config.modalities) != MODALITIES:
        raise ConversionError(f"{source}: reference Linear Fusion models are RGB-D; config has {list(config.modalities)}")
    key_map = reference_key_map(config)
    own = LinearFusionSegFormer(config).state_dict()
    if "encoder.patch_embed1.mask_token" in ref and not config.missing_token:
        raise ConversionError(f"{source}: holds a learned token (encoder.patch_embed1.mask_token, an M3L model) but the "
                              "config has model.missing_token: false; use an *_m3l_* config")
    unknown = sorted(k for k in ref if k not in key_map and k not in UNUSED)
    if unknown:
        hint = "; pick a branch with --branch" if any(k.split(".", 1)[0] in BRANCHES for k in unknown) else ""
        raise ConversionError(f"{source}: unknown reference tensor(s) {unknown[:5]}"
                              f"{f' (+{len(unknown) - 5} more)' if len(unknown) > 5 else ''}{hint}")
    missing = sorted(k for k in key_map if k not in ref and k not in OPTIONAL)
    if missing:
        raise ConversionError(f"{source}: missing reference tensor(s) {missing[:5]}"
                              f"{f' (+{len(missing) - 5} more)' if len(missing) > 5 else ''} for a "
                              f"{config.backbone} model (wrong --config backbone, or missing_token?)")
    out = {k: v.clone() for k, v in own.items()}
    filled: dict[Target, str] = {}
    for name, (dst, slot) in key_map.items():
        if name not in ref:
            continue  # OPTIONAL, left at its initial value
        value = ref[name]
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{source}: '{name}' is a {type(value).__name__}, not a tensor")
        target = out[dst] if slot is None else out[dst][slot]
        if tuple(value.shape) != tuple(target.shape):
            raise ConversionError(f"{source}: '{name}' has shape {tuple(value.shape)} but the configured model "
                                  f"({config.backbone}, {config.num_classes} classes, decoder_dim "
                                  f"{config.decoder_dim}) needs {tuple(target.shape)} for {dst}")
        if (dst, slot) in filled:
            raise ConversionError(f"{source}: '{name}' and '{filled[(dst, slot)]}' both fill {dst}")
        filled[(dst, slot)] = name
        target.copy_(value.to(target.dtype))
    need = {t for n, t in key_map.items() if n not in OPTIONAL}
    lost = sorted(f"{d}[{s}]" if s is not None else d for d, s in need - set(filled))
    if lost:
        raise ConversionError(f"{source}: project tensor(s) left unfilled: {lost[:5]}")
    return out


def read_reference(path: str | Path, *, branch: str | None = None) -> dict[str, torch.Tensor]:
    """The reference state dict in ``path``, read with ``weights_only=True`` (never runs pickled code)."""
    path = str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConversionError(f"{path}: file not found") from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError, struct.error,
            zipfile.BadZipFile, IndexError, KeyError) as e:  # truncated or foreign files fail in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: refused: not a plain tensor checkpoint that torch.load(weights_only=True) "
                              f"can read safely ({first})") from e
    state = obj
    if isinstance(obj, dict) and not _is_state(obj):
        state = next((obj[k] for k in STATE_KEYS if k in obj and isinstance(obj[k], dict)), None)
    if not isinstance(state, dict) or not _is_state(state):
        what = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path}: expected a state dict (tensors by name) at the top level or under one of "
                              f"{list(STATE_KEYS)}, got {what}")
    if all(k.startswith("module.") for k in state):  # saved from a DDP/DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    branches = sorted({k.split(".", 1)[0] for k in state} & set(BRANCHES))
    if branches:
        if branch is None:
            raise ConversionError(f"{path}: a mean-teacher snapshot with {branches} weights; choose one with "
                                  f"--branch {'|'.join(branches)}")
        if branch not in branches:
            raise ConversionError(f"{path}: no '{branch}.*' weights (has {branches})")
        others = [k for k in state if k.split(".", 1)[0] not in BRANCHES]
        if others:
            raise ConversionError(f"{path}: unknown reference tensor(s) {sorted(others)[:5]}")
        state = {k[len(branch) + 1:]: v for k, v in state.items() if k.startswith(branch + ".")}
    elif branch is not None:
        raise ConversionError(f"{path}: --branch {branch} given but the file holds a single model")
    return state


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and all(isinstance(v, torch.Tensor) for v in d.values())


def reference_settings(config: ModelConfig, pre: Preprocessing) -> tuple[ModelConfig, Preprocessing]:
    """``config`` and ``pre`` with every inference setting the reference's (see docs/reference_deviations.md)."""
    model = replace(config, align_corners=True, layernorm_eps=REFERENCE_LN_EPS, freeze_bn=True)
    return model, replace(pre, depth_norm="minmax_all", nearest_align="corner")


def convert_file(
    ref_path: str | Path,
    out_path: str | Path,
    *,
    config: ModelConfig,
    preprocessing: Preprocessing,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    branch: str | None = None,
    extra: dict[str, Any] | None = None,
) -> LinearFusionSegFormer:
    """Convert ``ref_path`` and write the checkpoint to ``out_path``; returns the model."""
    from m3l_core.checkpoint import save_checkpoint

    config, preprocessing = reference_settings(config, preprocessing)
    state = convert_state(read_reference(ref_path, branch=branch), config, source=str(ref_path))
    model = LinearFusionSegFormer(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    digest = hashlib.sha256(Path(ref_path).read_bytes()).hexdigest()
    info = {"converted_from": Path(ref_path).name, "reference_sha256": digest, "reference_branch": branch,
            "converter": "m3l_core.convert_reference", **(extra or {})}
    save_checkpoint(out_path, model, class_names=class_names, palette=palette, preprocessing=preprocessing,
                    extra=info)
    return model


# --- command line --------------------------------------------------------------------------------


def _class_names(arg: str | None, cfg: Any, num_classes: int) -> list[str]:
    if arg:
        p = Path(arg)
        names = ([n.strip() for n in p.read_text().splitlines() if n.strip()] if p.is_file()
                 else [n.strip() for n in arg.split(",") if n.strip()])
    else:
        from m3l_core.data.paper import STANFORD_CLASSES, SUNRGBD_CLASSES

        known = {"stanford": STANFORD_CLASSES, "sun": SUNRGBD_CLASSES}
        if cfg.data.format not in known:
            raise ValueError(f"data.format {cfg.data.format!r} has no built-in class list: pass --class-names")
        names = list(known[cfg.data.format])
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class model")
    return names


def _palette(arg: str | None) -> list[list[int]] | None:
    if not arg:
        return None
    data = json.loads(Path(arg).read_text())
    if not isinstance(data, list) or not all(isinstance(c, list) and len(c) == 3 for c in data):
        raise ValueError(f"{arg}: palette must be a JSON list of [r, g, b] lists")
    return data


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m3l_core.convert_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="the authors' .pth checkpoint")
    parser.add_argument("--config", required=True, help="training config of the model, e.g. config/train/stanford_m3l_1.yaml")
    parser.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    parser.add_argument("--branch", choices=BRANCHES, help="which model of a mean-teacher snapshot to convert")
    parser.add_argument("--class-names", help="file with one class name per line, or a comma-separated list "
                                              "(default: the dataset's classes for stanford/sun configs)")
    parser.add_argument("--palette", help="JSON file: a list of [r, g, b] per class (default: the project palette)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ns = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from m3l_core.cli.common import run_guarded
    from m3l_core.train.config import ConfigError, load_config

    def body() -> int:
        try:  # every error up to here is in the arguments (exit 2); converting can fail on the file (exit 1)
            cfg = load_config(ns.config, ns.set)
            num_classes = cfg.model.num_classes
            if num_classes < 1:
                raise ValueError(f"{ns.config}: set model.num_classes (the reference model's class count)")
            model_cfg = cfg.model.build(num_classes)
            names = _class_names(ns.class_names, cfg, num_classes)
            palette = _palette(ns.palette)
        except (ValueError, OSError) as e:
            raise ConfigError(str(e)) from e
        if not Path(ns.reference).is_file():
            raise ConfigError(f"{ns.reference}: file not found")
        convert_file(ns.reference, ns.out, config=model_cfg, preprocessing=cfg.preprocessing(), class_names=names,
                     palette=palette, branch=ns.branch, extra={"config": str(ns.config)})
        log.info("wrote %s (%s, %d classes, reference settings)", ns.out, model_cfg.backbone, num_classes)
        return 0

    # ConfigError is a ValueError: usage is checked first, and converting raises none.
    return run_guarded(body, usage=(ConfigError,), failure=(ConversionError, ValueError, OSError), interrupted=None)


if __name__ == "__main__":
    sys.exit(main())
