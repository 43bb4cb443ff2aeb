"""Checks a checkpoint's metadata and tensor shapes before anything is allocated.

A checkpoint describes the model it holds (``model``), how inputs are prepared
(``preprocessing``), and the class list (``class_names``, ``palette``). A
crafted or damaged file must fail here with a :class:`CheckpointError` naming
the file and the field, not later as a 6 GB allocation or a raw ``TypeError``.

The set of fields and their types come from the dataclasses
(:class:`~m3l_core.model.ModelConfig`, :class:`~m3l_core.preprocess.Preprocessing`),
so a field added there with a default is checked for its type and accepted
without touching this module; fields with a meaning-specific range are listed
in :data:`BOUNDS`. The same checks serve exported models (ONNX, OpenVINO) that
carry the same metadata: call :func:`validate_metadata`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from m3l_core.model import BACKBONES, MODALITIES, ModelConfig
from m3l_core.preprocess import DEPTH_NORMS, Preprocessing

FORMAT = "m3l-ros/checkpoint/v1"

# Documented bounds (README, "Checkpoints"): inclusive ranges of numeric fields.
INPUT_SIDE = (8, 4096)  # each side of preprocessing.input_size; 4096 covers 4K (3840x2160)
MAX_INPUT_PIXELS = 3840 * 2160  # model input area at most 4K UHD
BOUNDS: dict[str, tuple[float, float]] = {
    "model.num_classes": (1, 4096),
    "model.decoder_dim": (1, 4096),
    "model.fusion_alpha": (0.0, 1.0),
    "model.tokenfusion_threshold": (0.0, 1.0),
    "model.drop_path_rate": (0.0, 1.0),
    "model.decoder_dropout": (0.0, 1.0),
    "preprocessing.ignore_index": (0, 65535),  # labels travel as mono8 or 16UC1
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, truncated, foreign or inconsistent.

    ``path`` is the file and ``field`` the metadata field or tensor name at fault (if any).
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.field = field


@dataclass
class CheckedMetadata:
    """The metadata of a checkpoint once every field has been checked."""

    model_config: ModelConfig
    preprocessing: Preprocessing
    class_names: list[str]
    palette: list[list[int]]

    @property
    def ignore_index(self) -> int:
        return self.preprocessing.ignore_index


def _fail(source: str, name: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{source}: metadata field '{name}': {reason}", path=source, field=name)


def _dataclass_error(source: str, prefix: str, e: Exception) -> CheckpointError:
    """A dataclass ``__post_init__`` error ("model.x must ...") as the error of field ``model.x``."""
    m = re.match(rf"{prefix}\.(\w+)", str(e))
    return _fail(source, f"{prefix}.{m.group(1)}" if m else prefix, str(e))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """True when a JSON value fits a dataclass field annotation (ints are not bools, floats are finite)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True  # an annotation this checker does not know: the dataclass's own checks apply


def _check_section(section: Any, cls: type, prefix: str, source: str, *, allow_unknown: bool) -> dict[str, Any]:
    """Type- and range-check one metadata section against the fields of ``cls``; returns the known fields."""
    if not isinstance(section, dict):
        raise _fail(source, prefix, f"expected an object, got {_short(section)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown and not allow_unknown:
        raise _fail(source, f"{prefix}.{unknown[0]}", f"unknown field (known: {sorted(names)})")
    for name in sorted(names & set(section)):
        value, key = section[name], f"{prefix}.{name}"
        if not _matches(value, hints[name]):
            raise _fail(source, key, f"expected {_describe(hints[name])}, got {_short(value)}")
        if key in BOUNDS:
            lo, hi = BOUNDS[key]
            if not lo <= value <= hi:
                raise _fail(source, key, f"{_short(value)} is outside the allowed range [{lo}, {hi}]")
    return {k: v for k, v in section.items() if k in names}


def _check_model(section: Any, source: str) -> ModelConfig:
    known = _check_section(section, ModelConfig, "model", source, allow_unknown=False)
    if "backbone" in known and known["backbone"] not in BACKBONES:
        raise _fail(source, "model.backbone", f"{_short(known['backbone'])} is not one of {sorted(BACKBONES)}")
    mods = known.get("modalities", MODALITIES)
    if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
        raise _fail(source, "model.modalities", f"must be a non-empty subset of {list(MODALITIES)}, got {_short(mods)}")
    try:
        return ModelConfig(**known)
    except (TypeError, ValueError) as e:
        raise _dataclass_error(source, "model", e) from e


def _check_preprocessing(section: Any, source: str) -> Preprocessing:
    known = _check_section(section, Preprocessing, "preprocessing", source, allow_unknown=True)
    if "input_size" in known:
        h, w = known["input_size"]
        lo, hi = INPUT_SIDE
        if not (lo <= h <= hi and lo <= w <= hi and h * w <= MAX_INPUT_PIXELS):
            raise _fail(source, "preprocessing.input_size",
                        f"{[h, w]} is outside the allowed sizes (each side in [{lo}, {hi}], "
                        f"H*W <= {MAX_INPUT_PIXELS})")
    if "rgb_std" in known and not all(v > 0 for v in known["rgb_std"]):
        raise _fail(source, "preprocessing.rgb_std", f"every value must be > 0, got {known['rgb_std']}")
    if "depth_norm" in known and known["depth_norm"] not in DEPTH_NORMS:
        raise _fail(source, "preprocessing.depth_norm", f"{_short(known['depth_norm'])} is not one of {DEPTH_NORMS}")
    if "depth_range" in known:
        lo, hi = known["depth_range"]
        if not 0 <= lo < hi:
            raise _fail(source, "preprocessing.depth_range", f"must be (min, max) metres with 0 <= min < max, got {[lo, hi]}")
    try:
        return Preprocessing(**known)
    except (TypeError, ValueError) as e:
        raise _dataclass_error(source, "preprocessing", e) from e


def _check_classes(meta: Mapping[str, Any], num_classes: int, source: str) -> tuple[list[str], list[list[int]]]:
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(source, "class_names", f"expected a list of strings, got {_short(names)}")
    if len(names) != num_classes:
        raise _fail(source, "class_names", f"{len(names)} names for model.num_classes = {num_classes}")
    palette = meta.get("palette")
    if not isinstance(palette, list):
        raise _fail(source, "palette", f"expected a list of [r, g, b] colours, got {_short(palette)}")
    if len(palette) != num_classes:
        raise _fail(source, "palette", f"{len(palette)} colours for model.num_classes = {num_classes}")
    for i, c in enumerate(palette):
        ok = isinstance(c, list) and len(c) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        if not ok:
            raise _fail(source, f"palette[{i}]", f"expected [r, g, b] integers in 0..255, got {_short(c)}")
    return list(names), [list(c) for c in palette]


def validate_metadata(meta: Any, *, source: str = "<metadata>") -> CheckedMetadata:
    """Check a checkpoint's metadata dict completely; raise :class:`CheckpointError` naming ``source`` and the field.

    Used by :func:`m3l_core.checkpoint.load_checkpoint` before any model is built, and by
    exported-model loaders that carry the same metadata. Nothing is allocated beyond the dict.
    """
    source = str(source)
    if not isinstance(meta, dict):
        raise _fail(source, "<root>", f"expected a JSON object, got {_short(meta)}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{source}: unsupported checkpoint format {meta.get('format')!r}, expected {FORMAT!r}",
                              path=source, field="format")
    for key in ("model", "class_names", "palette", "preprocessing"):
        if key not in meta:
            raise _fail(source, key, "missing")
    cfg = _check_model(meta["model"], source)
    pre = _check_preprocessing(meta["preprocessing"], source)
    names, palette = _check_classes(meta, cfg.num_classes, source)
    if pre.ignore_index < cfg.num_classes:
        raise _fail(source, "preprocessing.ignore_index", f"{pre.ignore_index} is a class id "
                    f"(model.num_classes = {cfg.num_classes}); it must be >= num_classes")
    if "ignore_index" in meta and meta["ignore_index"] != pre.ignore_index:
        raise _fail(source, "ignore_index", f"{_short(meta['ignore_index'])} differs from "
                    f"preprocessing.ignore_index = {pre.ignore_index}")
    if "extra" in meta and not isinstance(meta["extra"], dict):
        raise _fail(source, "extra", f"expected an object, got {_short(meta['extra'])}")
    return CheckedMetadata(model_config=cfg, preprocessing=pre, class_names=names, palette=palette)


def expected_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model for ``config`` stores, computed on the ``meta`` device (no memory)."""
    import torch

    from m3l_core.model import LinearFusionSegFormer

    with torch.device("meta"):
        model = LinearFusionSegFormer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_tensor_shapes(shapes: Mapping[str, Any], config: ModelConfig, *, source: str = "<weights>") -> None:
    """Compare tensor shapes read from a file header with those ``config`` implies; names the first mismatches."""
    want = expected_tensor_shapes(config)
    have = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = [k for k in want if k in have and have[k] != want[k]]
    if not (missing or unexpected or wrong):
        return
    if wrong:
        k = wrong[0]
        detail = f"shape {list(have[k])}, but the metadata's model config needs {list(want[k])}"
        detail += f" ({len(wrong)} tensor(s) differ)" if len(wrong) > 1 else ""
    elif missing:
        k, detail = missing[0], f"missing ({len(missing)} tensor(s) missing, e.g. {missing[:3]})"
    else:
        k, detail = unexpected[0], f"not part of the model ({len(unexpected)} unexpected, e.g. {unexpected[:3]})"
    raise CheckpointError(f"{source}: tensor '{k}': {detail}; the weights do not match the metadata",
                          path=source, field=k)
