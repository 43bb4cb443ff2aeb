"""Training configuration: a dataclass tree read from YAML, with ``--set key=value`` overrides.

A config file sets any subset of the fields below; the rest keep their
defaults. ``base: other.yaml`` (a path relative to the including file, or a
list of them) inherits another file first, so the paper's settings live once
in ``stanford_base.yaml`` and each experiment only states what differs::

    base: stanford_base.yaml
    framework: m3l
    data: {train_labeled: splits/stanford/train_labeled_0.1.txt}

Every key is checked against the dataclasses: an unknown key or a value of the
wrong type raises :class:`ConfigError` naming the key and the file (or
``--set``) it came from. Values are parsed as YAML, so ``--set data.crop_size=[64,64]``
and ``--set optim.lr=1e-3`` work as expected.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from m3l_core.data.transforms import PAPER_SCALES
from m3l_core.model import MODALITIES, ModelConfig
from m3l_core.preprocess import DEPTH_NORMS, Preprocessing

FRAMEWORKS = ("supervised", "modality_dropout", "mean_teacher", "m3l")
VAL_METRICS = ("auto", "rgbd", "rgb", "depth", "mm_robust")
DATA_FORMATS = ("folder", "stanford", "sun")
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and its source."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class DataConfig:
    format: str = "folder"  # folder (the documented format) | stanford | sun (the paper's split files)
    root: str = ""  # dataset root; `--data DIR` sets it
    # folder: split names (splits/<name>.txt); stanford/sun: split files, relative to root or absolute.
    train_labeled: str = "train_labeled"
    train_unlabeled: str = "train_unlabeled"
    val: str = "val"
    semantic_labels: str = ""  # stanford only; default <root>/semantic_labels.json
    depth_bitshift: bool = True  # sun only; False if the depth PNGs already hold plain millimetres
    crop_size: tuple[int, int] = (540, 540)  # (H, W) training crop; 540 Stanford, 500 SUN RGB-D
    eval_size: tuple[int, int] | None = None  # model input size at test time; None = crop_size
    scales: tuple[float, ...] = PAPER_SCALES  # random rescale factors (paper A.3)
    flip: bool = True
    depth_norm: str = "minmax"  # per-image min-max (paper) or "metric" (fixed range, steadier on robots)
    depth_range: tuple[float, float] = (0.0, 10.0)  # metres, for depth_norm=metric
    num_workers: int = 4  # DataLoader worker processes per rank
    val_batch: int = 8  # per rank


@dataclass
class ModelSection(ModelConfig):
    """:class:`ModelConfig` plus the two things only training needs."""

    num_classes: int = 0  # 0: take it from the dataset's classes; otherwise it must match them
    pretrained: str = ""  # official SegFormer mit_bX.pth (or .safetensors) ImageNet weights; never downloaded
    # An M3L-ROS checkpoint (e.g. a supervised run's model.safetensors) to start from, loaded after
    # `pretrained`: the stand-in for ImageNet weights when there are none, or to fine-tune on new data.
    init: str = ""

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if self.num_classes < 0:
            raise ValueError(f"model.num_classes must be >= 0 (0 = from the dataset), got {self.num_classes}")
        self.build(max(self.num_classes, 1))  # validates the shared fields with ModelConfig's own checks

    def build(self, num_classes: int) -> ModelConfig:
        """The :class:`ModelConfig` for a dataset with ``num_classes`` classes."""
        if self.num_classes and self.num_classes != num_classes:
            raise ValueError(f"model.num_classes is {self.num_classes} but the dataset has {num_classes} classes")
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        kw["num_classes"] = num_classes
        return ModelConfig(**kw)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # encoder weights and norms (paper 4.2)
    decoder_lr_mult: float = 3.0  # decoder at 3x the encoder lr (3e-4)
    weight_decay: float = 1e-4  # encoder and decoder weights
    norm_weight_decay: float = 0.0  # LayerNorms, biases, the missing token and the ensemble weights
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults ("momentum 0.9")
    poly_power: float = 0.9  # lr = base * (1 - step / max_iters) ** power, no warm-up


@dataclass
class LossConfig:
    ohem_thresh: float = 0.7  # keep pixels whose ground-truth probability is <= this ...
    ohem_min_kept: float = 0.08  # ... but at least this fraction of the supervised pixels (hardest first)
    lambda_pseudo: float = 1.0  # weight of the pseudo-label loss (Eq. 10)
    # Steps of sigmoid ramp-up of lambda_pseudo; 0 = the paper (full weight at once, from ImageNet weights).
    # Useful when training from scratch, where the early teacher's labels are noise.
    pseudo_rampup: int = 0
    alpha_ema: float = 0.99  # teacher EMA cap: a = min(1 - 1/(step+1), alpha_ema)
    # Per-sample masking probabilities for [mask rgb, mask depth, mask nothing]; "equal proportions".
    mask_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)


@dataclass
class TrainConfig:
    framework: str = "m3l"  # supervised | modality_dropout | mean_teacher | m3l
    seed: int = 0  # every random draw (init, data order, augmentation, masks, dropout) derives from it
    max_iters: int = 15300  # optimizer steps; Stanford 15300, SUN RGB-D 14700
    labeled_batch: int = 16  # per rank (DDP: global batch = world_size x this)
    unlabeled_batch: int = 16  # per rank; only mean_teacher and m3l load unlabeled data
    eval_every: int = 300  # validate (and keep the best) every N steps and at the end; 0 = never
    save_every: int = 300  # write the resumable state every N steps and at the end
    log_every: int = 20  # one metrics.jsonl line per N steps
    # auto: mm_robust for models trained for a missing modality (m3l, modality_dropout),
    # rgbd for the other RGB-D models, and the only condition of a uni-modal model.
    val_metric: str = "auto"
    eval_model: str = "student"  # mean_teacher/m3l: validate and export the student or the EMA teacher
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: CUDA only, with a gradient scaler)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on GPU)
    progress: bool = True  # tqdm bar on the main rank
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        check = _checker(self)
        check("framework", self.framework in FRAMEWORKS, f"one of {FRAMEWORKS}")
        check("seed", self.seed >= 0, ">= 0")
        check("max_iters", self.max_iters >= 1, ">= 1")
        check("labeled_batch", self.labeled_batch >= 1, ">= 1")
        check("unlabeled_batch", self.unlabeled_batch >= 0, ">= 0")
        if self.framework == "mean_teacher":
            check("unlabeled_batch", self.unlabeled_batch >= 1, ">= 1 for mean_teacher")
        for k in ("eval_every", "save_every"):
            check(k, getattr(self, k) >= 0, ">= 0")
        check("log_every", self.log_every >= 1, ">= 1")
        check("val_metric", self.val_metric in VAL_METRICS, f"one of {VAL_METRICS}")
        check("eval_model", self.eval_model in ("student", "teacher"), "'student' or 'teacher'")
        if self.eval_model == "teacher":
            check("eval_model", self.uses_teacher, "'student' for frameworks without a teacher")
        check("precision", self.precision in PRECISIONS, f"one of {PRECISIONS}")
        mods = tuple(self.model.modalities)
        if self.framework in ("m3l", "modality_dropout"):
            check("model.modalities", mods == MODALITIES, f"{list(MODALITIES)}: {self.framework} masks modalities")
        if self.val_metric != "auto":
            avail = {"rgbd", "rgb", "depth", "mm_robust"} if mods == MODALITIES else set(mods)
            check("val_metric", self.val_metric in avail, f"one of {sorted(avail)} for a model with {list(mods)}")
        d = self.data
        check("data.format", d.format in DATA_FORMATS, f"one of {DATA_FORMATS}")
        check("data.crop_size", len(d.crop_size) == 2 and min(d.crop_size) >= 1, "(H, W) >= 1")
        if d.eval_size is not None:
            check("data.eval_size", len(d.eval_size) == 2 and min(d.eval_size) >= 1, "(H, W) >= 1 or null")
        check("data.scales", len(d.scales) >= 1 and min(d.scales) > 0, "non-empty and positive")
        check("data.depth_norm", d.depth_norm in DEPTH_NORMS, f"one of {DEPTH_NORMS}")
        check("data.depth_range", d.depth_range[1] > d.depth_range[0], "(min, max) with max > min")
        check("data.num_workers", d.num_workers >= 0, ">= 0")
        check("data.val_batch", d.val_batch >= 1, ">= 1")
        o = self.optim
        check("optim.lr", o.lr > 0, "> 0")
        check("optim.decoder_lr_mult", o.decoder_lr_mult > 0, "> 0")
        check("optim.weight_decay", o.weight_decay >= 0, ">= 0")
        check("optim.norm_weight_decay", o.norm_weight_decay >= 0, ">= 0")
        check("optim.betas", all(0 <= b < 1 for b in o.betas), "two values in [0, 1)")
        check("optim.poly_power", o.poly_power >= 0, ">= 0")
        s = self.loss
        check("loss.ohem_thresh", 0 < s.ohem_thresh <= 1, "in (0, 1]")
        check("loss.ohem_min_kept", 0 <= s.ohem_min_kept <= 1, "in [0, 1]")
        check("loss.lambda_pseudo", s.lambda_pseudo >= 0, ">= 0")
        check("loss.pseudo_rampup", s.pseudo_rampup >= 0, ">= 0")
        check("loss.alpha_ema", 0 <= s.alpha_ema < 1, "in [0, 1)")
        check("loss.mask_probs", min(s.mask_probs) >= 0 and abs(sum(s.mask_probs) - 1) < 1e-6,
              "three probabilities [mask rgb, mask depth, none] summing to 1")

    @property
    def uses_teacher(self) -> bool:
        return self.framework in ("mean_teacher", "m3l")

    @property
    def uses_unlabeled(self) -> bool:
        return self.uses_teacher and self.unlabeled_batch > 0

    def resolved_val_metric(self) -> str:
        """The condition (or ``mm_robust``) whose mIoU picks the best checkpoint."""
        if self.val_metric != "auto":
            return self.val_metric
        mods = tuple(self.model.modalities)
        if mods != MODALITIES:
            return mods[0]
        return "mm_robust" if self.framework in ("m3l", "modality_dropout") else "rgbd"

    def preprocessing(self, ignore_index: int = 255) -> Preprocessing:
        """How inputs are prepared at test time; stored in every checkpoint."""
        d = self.data
        return Preprocessing(input_size=tuple(d.eval_size or d.crop_size), depth_norm=d.depth_norm,
                             depth_range=tuple(d.depth_range), ignore_index=ignore_index,
                             extra={"train_crop_size": list(d.crop_size)})

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _checker(cfg: TrainConfig):
    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"'{key}' must be {expected}, got {value!r}", key=key)
    return check


def _plain(v: Any) -> Any:
    """Tuples -> lists, recursively, for YAML/JSON."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# --- loading -------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def flatten(data: Any, source: str, cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """A (nested) config mapping -> ``{"data.crop_size": value, ...}``; unknown keys raise naming ``source``."""
    if not isinstance(data, dict):
        where = f"section '{prefix[:-1]}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in hints or key.startswith("_"):
            known = ", ".join(sorted(k for k in hints if not k.startswith("_")))
            raise ConfigError(f"{source}: unknown config key '{name}' (known keys{' in ' + prefix[:-1] if prefix else ''}: {known})")
        if _is_section(hints[key]):
            out.update(flatten(value if value is not None else {}, source, hints[key], f"{name}."))
        else:
            out[name] = value
    return out


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns it in canonical form."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{key}' must be {expected}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        errors = []
        for a in rest:
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(rest) == 1 else bad(" or ".join(map(_type_name, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values ({_type_name(tp)})")
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad("a mapping")
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp!r}")  # pragma: no cover - schema bug


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _leaf_types(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, tp in _hints(cls).items():
        if _is_section(tp):
            out.update(_leaf_types(tp, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tp
    return out


def _read_yaml(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``path`` and its ``base`` files as ``[(source, mapping), ...]``, bases first."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: 'base' files form a cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (f" (base of {stack[-1]})" if stack else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    bases = data.pop("base", None)
    out: list[tuple[str, dict[str, Any]]] = []
    if bases is not None:
        for b in [bases] if isinstance(bases, str) else bases:
            if not isinstance(b, str):
                raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got {b!r}")
            out += _read_yaml(path.parent / b, (*stack, path))
    out.append((str(path), data))
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", "1e-3" parsed as YAML)``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: cannot parse the value as YAML: {e}") from e
    return key, value


def build_config(layers: Iterable[tuple[str, dict[str, Any]]]) -> TrainConfig:
    """Merge flattened layers (later wins) into a checked :class:`TrainConfig`."""
    leaves = _leaf_types()
    values: dict[str, tuple[Any, str]] = {}
    for source, mapping in layers:
        for key, value in flatten(mapping, source).items():
            values[key] = (_coerce(value, leaves[key], key, source), source)
    nested: dict[str, Any] = {}
    for key, (value, _) in values.items():
        *sections, leaf = key.split(".")
        node = nested
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = value
    try:
        return _construct(TrainConfig, nested)
    except (TypeError, ValueError) as e:
        # Name the file that set the offending key (or every file, if the key cannot be told).
        key = getattr(e, "key", None) or next((k for k in values if k in str(e)), None)
        if key in values:
            where = values[key][1]
        elif key is not None:
            where = f"default value of '{key}'"
        else:
            where = ", ".join(sorted({s for _, s in values.values()})) or "defaults"
        raise ConfigError(f"{where}: {e}", key=key) from e


def _construct(cls: type, d: dict[str, Any]) -> Any:
    hints = _hints(cls)
    kw = {k: (_construct(hints[k], v) if _is_section(hints[k]) else v) for k, v in d.items()}
    return cls(**kw)


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    extra: dict[str, Any] | None = None,
) -> TrainConfig:
    """Read ``path`` (with its ``base`` chain), then ``extra`` (e.g. from CLI flags), then ``--set`` overrides."""
    layers: list[tuple[str, dict[str, Any]]] = _read_yaml(Path(path)) if path is not None else []
    if extra:
        layers.append(("command line", extra))
    for text in overrides:
        key, value = parse_override(text)
        nested: dict[str, Any] = {}
        node = nested
        *sections, leaf = key.split(".")
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = value
        layers.append((f"--set {key}", nested))
    return build_config(layers)


def dump_config(cfg: TrainConfig) -> str:
    """The fully resolved config as YAML (loadable by :func:`load_config`)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
