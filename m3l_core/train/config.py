"""The training schema: a dataclass tree read from YAML, with ``--set key=value`` overrides.

A config file sets any subset of the fields below; the rest keep their
defaults. ``base: other.yaml`` (a path relative to the including file, or a
list of them) inherits another file first, so the paper's settings live once
in ``stanford_base.yaml`` and each experiment only states what differs::

    base: stanford_base.yaml
    framework: m3l
    data: {train_labeled: splits/stanford/train_labeled_0.1.txt}

Reading, type checking and error messages (the key and the file or ``--set`` it
came from) are the generic engine in :mod:`m3l_core.train.typed_yaml`; this module
only holds the fields and their range checks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from m3l_core.data.check import CHECK_LEVELS
from m3l_core.data.datasets import DATA_FORMATS
from m3l_core.data.transforms import PAPER_SCALES
from m3l_core.model import ModelConfig
from m3l_core.preprocess import DEPTH_NORMS, NEAREST_ALIGNS, Preprocessing
from m3l_core.train import typed_yaml
from m3l_core.train.losses import MIN_KEPT_BASES
from m3l_core.train.typed_yaml import ConfigError, make_checker
from m3l_core.vocab import CONDITIONS, MODALITIES, PRECISIONS

__all__ = ["ConfigError", "DataConfig", "ModelSection", "OptimConfig", "LossConfig", "TrainConfig",
           "load_config", "dump_config", "FRAMEWORKS", "VAL_METRICS", "INIT_RESETS"]

FRAMEWORKS = ("supervised", "modality_dropout", "mean_teacher", "m3l", "cps")
VAL_METRICS = ("auto", *CONDITIONS, "mm_robust")
# Parts of a `model.init` checkpoint that may be left fresh (fine-tuning to another class set).
INIT_RESETS = ("classifier", "missing_token")


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
    nearest_align: str = "center"  # depth/label nearest resize: center (project) | corner (cv2, the reference)
    num_workers: int = 4  # DataLoader worker processes per rank
    # Before step 1, check every listed frame: "full" (headers, sizes, label values),
    # "headers" (no pixel decoding at all) or "off" (m3l_core.data.check).
    check: str = "full"
    val_batch: int = 8  # per rank


@dataclass
class ModelSection(ModelConfig):
    """:class:`ModelConfig` plus what only training needs: the class count check and the initial weights."""

    num_classes: int = 0  # 0: take it from the dataset's classes; otherwise it must match them
    pretrained: str = ""  # official SegFormer mit_bX.pth (or .safetensors) ImageNet weights; never downloaded
    # An M3L-ROS checkpoint (e.g. a supervised run's model.safetensors) to start from, loaded after
    # `pretrained`: the stand-in for ImageNet weights when there are none, or to fine-tune on new data.
    init: str = ""
    # Parts of `init` left fresh: "classifier" when the checkpoint's class set differs from the
    # dataset's (fine-tuning to new classes), "missing_token" always. Each reset is logged.
    init_reset: tuple[str, ...] = ()

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
    # Encoder LayerNorms and biases, the missing token and the ensemble weights. The decoder's
    # biases and BatchNorm are in the decoder group and take `weight_decay`.
    norm_weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults ("momentum 0.9")
    poly_power: float = 0.9  # lr = base * (1 - step / max_iters) ** power, no warm-up


@dataclass
class LossConfig:
    ohem_thresh: float = 0.7  # keep pixels whose ground-truth probability is <= this ...
    ohem_min_kept: float = 0.08  # ... but at least this fraction of the supervised pixels (hardest first)
    # Pixels that fraction refers to: "supervised_rows" (project) | "labeled_batch" (reference; see losses.py)
    ohem_min_kept_basis: str = "supervised_rows"
    lambda_pseudo: float = 1.0  # weight of the pseudo-label loss (Eq. 10)
    # Steps of sigmoid ramp-up of lambda_pseudo; 0 = the paper (full weight at once, from ImageNet weights).
    # Useful when training from scratch, where the early teacher's labels are noise.
    pseudo_rampup: int = 0
    # BEYOND THE PAPER (0 = the paper: every teacher pixel is a hard pseudo-label). When > 0, pixels
    # whose teacher softmax max-probability is below it are left out of the pseudo-label loss
    # (FixMatch/UniMatch confidence threshold), so a teacher trained from scratch does not teach noise.
    pseudo_threshold: float = 0.0
    alpha_ema: float = 0.99  # teacher EMA cap: a = min(1 - 1/(step+1), alpha_ema)
    # cps: weight of the cross pseudo supervision loss (the reference's `cps_weight`; it has no CPS
    # config, 1.5 is Chen et al.'s Pascal VOC setting). Ramped up by `pseudo_rampup` like lambda_pseudo.
    cps_weight: float = 1.5
    # cps: both networks see the same per-sample masked batch (mask_probs), as modality_dropout does.
    cps_modality_dropout: bool = False
    # TokenFusion's L1 sparsity loss on its token scores: loss += token_l1 * mean(score) (model.fusion tokenfusion).
    token_l1: float = 0.0
    # Per-sample masking probabilities for [mask rgb, mask depth, mask nothing]; "equal proportions".
    mask_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)


@dataclass
class TrainConfig:
    framework: str = "m3l"  # supervised | modality_dropout | mean_teacher | m3l | cps (two networks, CPS-Seg)
    seed: int = 0  # every random draw (init, data order, augmentation, masks, dropout) derives from it
    max_iters: int = 15300  # optimizer steps; Stanford 15300, SUN RGB-D 14700
    labeled_batch: int = 16  # per rank (DDP: global batch = world_size x this)
    unlabeled_batch: int = 16  # per rank; only mean_teacher, m3l and cps load unlabeled data
    eval_every: int = 300  # validate (and keep the best) every N steps and at the end; 0 = never
    save_every: int = 300  # write the resumable state every N steps and at the end
    log_every: int = 20  # one metrics.jsonl line per N steps
    # auto: mm_robust for models trained for a missing modality (m3l, modality_dropout, cps with masks),
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
        check = make_checker(self)
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
        if self.masks_modalities:
            check("model.modalities", mods == MODALITIES, f"{list(MODALITIES)}: {self.framework} masks modalities")
        if self.val_metric != "auto":
            avail = {*CONDITIONS, "mm_robust"} if mods == MODALITIES else set(mods)
            check("val_metric", self.val_metric in avail, f"one of {sorted(avail)} for a model with {list(mods)}")
        d = self.data
        check("data.format", d.format in DATA_FORMATS, f"one of {DATA_FORMATS}")
        check("data.crop_size", len(d.crop_size) == 2 and min(d.crop_size) >= 1, "(H, W) >= 1")
        if d.eval_size is not None:
            check("data.eval_size", len(d.eval_size) == 2 and min(d.eval_size) >= 1, "(H, W) >= 1 or null")
        check("data.scales", len(d.scales) >= 1 and min(d.scales) > 0, "non-empty and positive")
        check("data.depth_norm", d.depth_norm in DEPTH_NORMS, f"one of {DEPTH_NORMS}")
        check("data.depth_range", d.depth_range[1] > d.depth_range[0], "(min, max) with max > min")
        check("data.nearest_align", d.nearest_align in NEAREST_ALIGNS, f"one of {NEAREST_ALIGNS}")
        check("data.num_workers", d.num_workers >= 0, ">= 0")
        check("data.check", d.check in CHECK_LEVELS, f"one of {CHECK_LEVELS}")
        check("model.init_reset", set(self.model.init_reset) <= set(INIT_RESETS), f"a list of {INIT_RESETS}")
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
        check("loss.ohem_min_kept_basis", s.ohem_min_kept_basis in MIN_KEPT_BASES, f"one of {MIN_KEPT_BASES}")
        check("loss.lambda_pseudo", s.lambda_pseudo >= 0, ">= 0")
        check("loss.pseudo_rampup", s.pseudo_rampup >= 0, ">= 0")
        check("loss.pseudo_threshold", 0 <= s.pseudo_threshold < 1, "in [0, 1) (0 = keep every pseudo-label)")
        check("loss.alpha_ema", 0 <= s.alpha_ema < 1, "in [0, 1)")
        check("loss.cps_weight", s.cps_weight >= 0, ">= 0")
        if s.cps_modality_dropout:
            check("loss.cps_modality_dropout", self.framework == "cps", "false unless framework is cps")
        fusion = self.model.fusion
        check("loss.token_l1", s.token_l1 >= 0, ">= 0")
        check("loss.token_l1", s.token_l1 == 0 or fusion == "tokenfusion",
              f"0 for model.fusion {fusion!r} (only tokenfusion has token scores)")
        check("loss.mask_probs", min(s.mask_probs) >= 0 and abs(sum(s.mask_probs) - 1) < 1e-6,
              "three probabilities [mask rgb, mask depth, none] summing to 1")

    @property
    def uses_teacher(self) -> bool:
        return self.framework in ("mean_teacher", "m3l")

    @property
    def uses_pseudo(self) -> bool:
        """Trained on hard pseudo-labels: the EMA teacher's (mean_teacher, m3l) or the other network's (cps)."""
        return self.uses_teacher or self.framework == "cps"

    @property
    def masks_modalities(self) -> bool:
        """The student sees per-sample masked modalities (needs both)."""
        return self.framework in ("m3l", "modality_dropout") or (self.framework == "cps" and
                                                                  self.loss.cps_modality_dropout)

    @property
    def uses_unlabeled(self) -> bool:
        return self.uses_pseudo and self.unlabeled_batch > 0

    def resolved_val_metric(self) -> str:
        """The condition (or ``mm_robust``) whose mIoU picks the best checkpoint."""
        if self.val_metric != "auto":
            return self.val_metric
        mods = tuple(self.model.modalities)
        if mods != MODALITIES:
            return mods[0]
        return "mm_robust" if self.masks_modalities else "rgbd"

    def preprocessing(self, ignore_index: int = 255) -> Preprocessing:
        """How inputs are prepared at test time; stored in every checkpoint."""
        d = self.data
        return Preprocessing(input_size=tuple(d.eval_size or d.crop_size), depth_norm=d.depth_norm,
                             depth_range=tuple(d.depth_range), ignore_index=ignore_index,
                             nearest_align=d.nearest_align,
                             extra={"train_crop_size": list(d.crop_size)})

    def to_dict(self) -> dict[str, Any]:
        return typed_yaml.plain(dataclasses.asdict(self))


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    extra: dict[str, Any] | None = None,
) -> TrainConfig:
    """Read ``path`` (with its ``base`` chain), then ``extra`` (e.g. from CLI flags), then ``--set`` overrides."""
    return typed_yaml.load(TrainConfig, path, overrides, extra=extra)


def dump_config(cfg: TrainConfig) -> str:
    """The fully resolved config as YAML (loadable by :func:`load_config`)."""
    return typed_yaml.dump(cfg)
