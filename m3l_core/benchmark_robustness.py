"""The robustness benchmark's plan: variants, per-(variant, seed) runs, their commands and the reuse rule.

``scripts/benchmark_robustness.py`` is the command; this module holds what can be tested without
training anything. A *run* is one variant trained with one seed and evaluated on the test split.
Each finished run leaves a record (``records/<variant>_seed<S>.json`` in the work directory) with
its metrics, CPU and wall time and the exact settings it was made with; a later invocation with
``--reuse`` keeps a run only when those settings (data, iterations, every ``--set``, the variant's
definition and the content of its config files including their ``base:`` chain) are identical,
so an interrupted or partial benchmark can be completed without mixing settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from m3l_core.report import ROWS
from m3l_core.train.typed_yaml import ConfigError, read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "train"
RECORD_VERSION = 1


class BenchmarkError(ValueError):
    """A benchmark request that cannot be planned (unknown variant, missing config, missing source run)."""


@dataclass(frozen=True)
class Variant:
    """One benchmark row's training recipe: a config plus the runner's per-variant changes."""

    name: str
    label: str
    config: str  # file in config/train/
    iters_factor: int = 1  # max_iters = iters_factor * N (matched-compute rows use 2)
    init_from: str | None = None  # start from this variant's best checkpoint of the same seed
    init_lr: float | None = None  # optim.lr when started from trained weights
    beyond_paper: bool = False  # an addition of ours, labelled as such in every table
    default: bool = True  # part of the default --variants

    def definition(self) -> dict[str, Any]:
        """What decides the training (compared by ``--reuse``); labels and flags for the tables do not."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("label", "default", "beyond_paper")}


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("uni_rgb", "Uni-modal RGB (supervised)", "synthetic_uni_rgb.yaml"),
    Variant("uni_depth", "Uni-modal depth (supervised)", "synthetic_uni_depth.yaml"),
    Variant("cps_rgb", "Uni-modal RGB + CPS-Seg", "synthetic_cps_rgb.yaml"),
    Variant("cps_depth", "Uni-modal depth + CPS-Seg", "synthetic_cps_depth.yaml"),
    Variant("tf", "TF", "synthetic_tf.yaml"),
    Variant("tf_md", "TF + modality dropout", "synthetic_tf_md.yaml"),
    Variant("urn", "URN", "synthetic_urn.yaml"),
    Variant("urn_md", "URN + modality dropout", "synthetic_urn_md.yaml"),
    Variant("lf_sup", "LF supervised", "synthetic_sup.yaml"),
    Variant("lf_md", "LF + modality dropout", "synthetic_md.yaml"),
    Variant("lf_cps", "LF + CPS", "synthetic_cps.yaml", default=False),
    Variant("lf_cps_md", "LF + modality dropout + CPS", "synthetic_cps_md.yaml", default=False),
    Variant("lf_mt", "LF + mean teacher", "synthetic_mt.yaml"),
    Variant("lf_m3l", "LF + M3L", "synthetic_m3l.yaml"),
    Variant("lf_sup_2x", "LF supervised, 2x iterations", "synthetic_sup.yaml", iters_factor=2),
    Variant("lf_md_2x", "LF + modality dropout, 2x iterations", "synthetic_md.yaml", iters_factor=2),
    # Our stand-in for the paper's ImageNet start: M3L from this seed's LF supervised model at the
    # paper's lr for initialised weights; N more iterations, 2N in all (matched by the 2x rows).
    Variant("lf_m3l_init", "LF + M3L from LF supervised (two-stage, 2x iterations)", "synthetic_m3l.yaml",
            init_from="lf_sup", init_lr=1e-4),
    Variant("lf_m3l_stable", "LF + M3L, confidence 0.9 + ramp-up (beyond the paper)", "synthetic_m3l_stable.yaml",
            beyond_paper=True),
)}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(n for n, v in VARIANTS.items() if v.default)


@dataclass(frozen=True)
class BenchSettings:
    """What every run of one benchmark shares (the script's flags); fixed before any run."""

    labeled: int = 24
    unlabeled: int = 400
    val: int = 48
    test: int = 120
    height: int = 120
    width: int = 160
    data_seed: int = 0
    iters: int = 300  # N: iterations of a single-stage run
    eval_every: int = 50
    crop: tuple[int, int] = (96, 128)
    sets: tuple[str, ...] = ()  # extra --set for every run, after the runner's own

    def __post_init__(self) -> None:
        for key in ("labeled", "val", "test", "height", "width", "iters", "eval_every"):
            if getattr(self, key) < 1:
                raise BenchmarkError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.unlabeled < 0 or self.data_seed < 0:
            raise BenchmarkError("unlabeled and data_seed must be >= 0")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise BenchmarkError(f"crop must be two sizes >= 1, got {self.crop}")

    def data_spec(self) -> dict[str, int]:
        return dict(labeled=self.labeled, unlabeled=self.unlabeled, val=self.val, test=self.test,
                    height=self.height, width=self.width, seed=self.data_seed)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "crop": list(self.crop), "sets": list(self.sets)}


@dataclass
class RunPlan:
    """One (variant, seed) run: where it lives in the work directory and what it was asked with."""

    variant: Variant
    seed: int
    settings: dict[str, Any]  # compared for --reuse
    depends_on: str | None = None  # key of the run whose checkpoint this one starts from
    reuse: bool = False
    record: dict[str, Any] | None = field(default=None, repr=False)  # the reused record

    @property
    def key(self) -> str:
        return run_key(self.variant.name, self.seed)

    def run_dir(self, work: Path) -> Path:
        return work / "runs" / self.variant.name / f"seed{self.seed}"

    def eval_dir(self, work: Path) -> Path:
        return work / "eval" / self.variant.name / f"seed{self.seed}"

    def record_path(self, work: Path) -> Path:
        return record_path(work, self.variant.name, self.seed)

    def log(self, work: Path, step: str) -> Path:
        return work / "logs" / f"{self.key}_{step}.log"

    def train_args(self, work: Path) -> list[str]:
        """Arguments of ``training/train_m3l.py`` (the interpreter and script are the caller's)."""
        args = ["--config", str(CONFIG_DIR / self.variant.config), "--data", str(work / "data"),
                "--out", str(self.run_dir(work)), "--threads", "1"]
        for s in self.settings["sets"]:
            args += ["--set", s]
        if self.variant.init_from is not None:
            ckpt = work / "runs" / self.variant.init_from / f"seed{self.seed}" / "model.safetensors"
            args += ["--set", f"model.init={ckpt}"]
        return args

    def eval_args(self, work: Path) -> list[str]:
        """Arguments of ``training/evaluate.py``: the best checkpoint on the test split, all conditions."""
        return ["--checkpoint", str(self.run_dir(work) / "model.safetensors"), "--data", str(work / "data"),
                "--split", "test", "--out", str(self.eval_dir(work)), "--num-examples", "0", "--threads", "1"]


def run_key(variant: str, seed: int) -> str:
    return f"{variant}_seed{seed}"


def record_path(work: Path, variant: str, seed: int) -> Path:
    return Path(work) / "records" / f"{run_key(variant, seed)}.json"


def config_fingerprint(config: str) -> dict[str, str]:
    """sha256 of the config file and every file of its ``base:`` chain, keyed by file name."""
    path = CONFIG_DIR / config
    if not path.is_file():
        raise BenchmarkError(f"config/train/{config} does not exist")
    try:
        layers = read_yaml(path)
    except ConfigError as e:
        raise BenchmarkError(str(e)) from e
    return {Path(src).name: hashlib.sha256(Path(src).read_bytes()).hexdigest() for src, _ in layers}


def run_sets(variant: Variant, seed: int, bench: BenchSettings) -> list[str]:
    """The ``--set`` list of one run: the fixed benchmark settings, the variant's, then the user's."""
    sets = [f"data.crop_size=[{bench.crop[0]},{bench.crop[1]}]", f"max_iters={bench.iters * variant.iters_factor}",
            f"eval_every={bench.eval_every}", f"seed={seed}", "progress=false"]
    if variant.init_lr is not None:
        sets.append(f"optim.lr={variant.init_lr:g}")
    return sets + list(bench.sets)


def plan_runs(variants: Sequence[str], seeds: Sequence[int], bench: BenchSettings, work: Path, *,
              reuse: bool) -> list[RunPlan]:
    """Every requested run, sources before the runs that start from them, with the reuse decision.

    A run is reused only with ``reuse``, a record whose settings equal this plan's, and a reused
    source run (a retrained source would give a different start).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BenchmarkError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise BenchmarkError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
    for name in variants:
        src = VARIANTS[name].init_from
        if src is not None and src not in variants:
            raise BenchmarkError(f"variant {name} starts from {src}: include it in --variants")
    prints = {}
    for name in dict.fromkeys(variants):
        try:
            prints[name] = config_fingerprint(VARIANTS[name].config)
        except BenchmarkError as e:
            raise BenchmarkError(f"variant {name}: {e}") from e
    ordered = sorted(dict.fromkeys(variants), key=lambda n: VARIANTS[n].init_from is not None)
    plans: dict[str, RunPlan] = {}
    for name in ordered:
        v = VARIANTS[name]
        for seed in seeds:
            dep = run_key(v.init_from, seed) if v.init_from else None
            settings = dict(version=RECORD_VERSION, data=bench.data_spec(), iters=bench.iters,
                            eval_every=bench.eval_every, sets=run_sets(v, seed, bench), seed=seed,
                            variant=v.definition(), configs=prints[name],
                            source=plans[dep].settings if dep else None)
            plan = RunPlan(v, seed, settings, depends_on=dep)
            if reuse:
                rec = read_record(plan.record_path(work))
                ok = rec is not None and rec.get("settings") == settings and (dep is None or plans[dep].reuse)
                if ok and any(VARIANTS[n].init_from == name for n in variants):  # another run starts from it
                    ok = (plan.run_dir(work) / "model.safetensors").is_file()
                plan.reuse, plan.record = ok, rec if ok else None
            plans[plan.key] = plan
    return list(plans.values())


def check_configs(plans: Sequence[RunPlan]) -> None:
    """Load every run's config with its ``--set`` list, so a typo fails now, not an hour into the benchmark."""
    from m3l_core.train.config import load_config

    for plan in plans:
        try:
            load_config(CONFIG_DIR / plan.variant.config, plan.settings["sets"])
        except ConfigError as e:
            raise BenchmarkError(f"{plan.key}: {e}") from e


def read_record(path: Path) -> dict[str, Any] | None:
    """A finished run's record, or None when absent or unreadable (an interrupted write leaves none)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and "metrics" in rec else None


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``path`` so that a reader (or a crash) sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def make_record(plan: RunPlan, work: Path, metrics: Mapping[str, Any], *, train: Mapping[str, float],
                evaluation: Mapping[str, float], finished_at: str) -> dict[str, Any]:
    """The record of a finished run; every path in it is relative to the work directory."""
    def rel(p: Path) -> str:
        return p.relative_to(work).as_posix()

    return dict(variant=plan.variant.name, label=plan.variant.label, seed=plan.seed, settings=plan.settings,
                metrics={r: metrics.get(r) for r in ROWS}, train=dict(train), eval=dict(evaluation),
                checkpoint=rel(plan.run_dir(work) / "model.safetensors"), eval_dir=rel(plan.eval_dir(work)),
                logs=[rel(plan.log(work, "train")), rel(plan.log(work, "eval"))], finished_at=finished_at)
