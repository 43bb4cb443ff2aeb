"""The training loop shared by the four frameworks: supervised, modality_dropout, mean_teacher, m3l.

:func:`train` reads top to bottom: data, model, teacher, optimizer, an optional
resume, then one loop over iterations. Each iteration

1. loads ``labeled_batch`` labeled (+ ``unlabeled_batch`` unlabeled) augmented crops,
2. asks :func:`~m3l_core.train.masking.plan_batch` what the student sees and which
   row gets which loss (the only place where the frameworks differ),
3. labels the pseudo-label rows with the EMA teacher's ensemble (unmasked, eval mode),
4. runs ONE student forward and ONE backward, steps AdamW at the poly lr,
5. moves the teacher towards the student.

Every ``eval_every`` steps it validates on the val split and keeps the best
weights in ``RUN/model.safetensors``; every ``save_every`` steps it writes the
resumable state to ``RUN/state/``.

Determinism: nothing random depends on history. The data order is a fixed
reshuffle per pass of each split, the augmentation of a sample derives from
``(seed, stream, position)``, the masks and torch's global RNG (dropout,
drop-path) from ``(seed, step, rank)``. A resumed run therefore computes exactly
what the uninterrupted run would have.

Multi-process (``torchrun``): the model is wrapped in DDP; rank ``r`` takes
positions ``[(step * world + r) * batch, ... + batch)`` of each stream, so a
2-rank run with batch 8 loads the same samples as a 1-rank run with batch 16.
Batch sizes in the config are per rank. Only rank 0 writes files.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from m3l_core import distributed as dist_utils
from m3l_core.checkpoint import CheckpointError, atomic_write_bytes, read_metadata, save_checkpoint
from m3l_core.data.folder import ClassInfo, DatasetError, FolderDataset
from m3l_core.data.transforms import EvalTransform, TrainTransform, collate
from m3l_core.evaluation import collate_eval, conditions_for, evaluate, summarize_results
from m3l_core.inference import PRECISIONS, autocast
from m3l_core.model import LinearFusionSegFormer
from m3l_core.train.config import ConfigError, DataConfig, TrainConfig, dump_config
from m3l_core.train.ema import EMATeacher
from m3l_core.train.losses import compute_losses, heads_for, pseudo_labels, pseudo_weight
from m3l_core.train.masking import BatchPlan, plan_batch
from m3l_core.train.optim import build_optimizer, set_lr

log = logging.getLogger(__name__)

STATE_FORMAT = "m3l-ros/train-state/v1"
LABELED, UNLABELED = 0, 1  # data streams
# Tags keep the seeds of different random draws apart.
_TAG_INIT, _TAG_ORDER, _TAG_AUG, _TAG_MASK, _TAG_TORCH = 11, 12, 13, 14, 15


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (hashing through numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


# --- data ---------------------------------------------------------------------------------------


def open_split(data: DataConfig, which: str, *, labeled: bool | None = None, transform: Any = None) -> Any:
    """One split (``train_labeled``, ``train_unlabeled`` or ``val``) of the configured dataset, raw samples."""
    root = Path(data.root)
    if not data.root:
        raise DatasetError("no dataset given: pass --data DIR (or set data.root)")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory not found")
    name = getattr(data, which)
    if data.format == "folder":
        return FolderDataset(root, name, labeled=labeled, transform=transform)
    path = Path(name) if Path(name).is_absolute() else root / name
    from m3l_core.data.paper import StanfordIndoor, SunRGBD

    if data.format == "stanford":
        return StanfordIndoor(root, path, transform, semantic_labels=data.semantic_labels or None)
    return SunRGBD(root, path, transform, depth_bitshift=data.depth_bitshift)


@functools.lru_cache(maxsize=16)
def _order(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, _TAG_ORDER, stream, epoch]).permutation(n)


def stream_index(n: int, position: int, *, seed: int, stream: int) -> int:
    """Sample at ``position`` of a stream that cycles a dataset of ``n``, reshuffled every pass."""
    epoch, i = divmod(position, n)
    return int(_order(n, seed, stream, epoch)[i])


def step_keys(
    step: int,
    *,
    sizes: Sequence[int],
    batches: Sequence[int],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[int, int, tuple[int, ...]]]:
    """The ``(stream, index, augmentation seed)`` of every sample this rank loads at ``step``.

    Labeled samples come first, then unlabeled ones. Position ``(step * world + rank) * batch + slot``
    of each stream is this rank's slot; its augmentation seed is ``(seed, stream, position)``.
    """
    keys = []
    for stream, (n, b) in enumerate(zip(sizes, batches)):
        for slot in range(b):
            pos = (step * world_size + rank) * b + slot
            keys.append((stream, stream_index(n, pos, seed=seed, stream=stream), (seed, _TAG_AUG, stream, pos)))
    return keys


class StepDataset(torch.utils.data.Dataset):
    """Loads and augments one sample per ``(stream, index, seed)`` key; safe in DataLoader workers."""

    def __init__(self, labeled: Any, unlabeled: Any | None, transform: TrainTransform) -> None:
        self.streams = (labeled, unlabeled)
        self.transform = transform

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams if s is not None)

    def __getitem__(self, key: tuple[int, int, tuple[int, ...]]) -> dict[str, Any]:
        stream, index, seed = key
        sample = self.streams[stream][index]
        if stream == LABELED and sample.get("label") is None:
            raise DatasetError(f"labeled training sample {sample.get('name')!r} has no label")
        if stream == UNLABELED:
            sample = {**sample, "label": None}  # never train on labels of the unlabeled split
        return self.transform(sample, np.random.default_rng(list(seed)))


class StepSampler(torch.utils.data.Sampler):
    """Yields the key list of each step in ``[start, stop)`` (use as ``batch_sampler``)."""

    def __init__(self, *, start: int, stop: int, **key_kwargs: Any) -> None:
        self.start, self.stop = start, stop
        self.key_kwargs = key_kwargs

    def __iter__(self) -> Iterator[list[tuple[int, int, tuple[int, ...]]]]:
        for step in range(self.start, self.stop):
            yield step_keys(step, **self.key_kwargs)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# --- model initialisation ----------------------------------------------------------------------

# May differ between a checkpoint and the model it initialises (e.g. a supervised run without the token).
_OPTIONAL_KEYS = ("missing_token",)


def init_from_checkpoint(model: LinearFusionSegFormer, path: str | Path) -> list[str]:
    """Copy the weights of an M3L-ROS checkpoint into ``model``; returns the parameters left fresh.

    Every tensor must match by name and shape, except the learned missing-modality
    token, which may exist on one side only.
    """
    path = str(path)
    read_metadata(path)  # a readable M3L-ROS checkpoint, or a CheckpointError naming the file
    state = st_load_file(path)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own and k not in _OPTIONAL_KEYS)
    missing = sorted(k for k in own if k not in state and k not in _OPTIONAL_KEYS)
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in state if k in own and state[k].shape != own[k].shape)
    if unexpected or missing or shapes:
        raise CheckpointError(f"{path}: does not fit the configured model (backbone, modalities, classes, "
                              f"decoder_dim): missing {missing[:4]}, unexpected {unexpected[:4]}, shapes {shapes[:4]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return sorted(k for k in own if k not in state)


# --- one step -----------------------------------------------------------------------------------


def train_step(
    net: torch.nn.Module,
    teacher: EMATeacher | None,
    batch: dict[str, Any],
    plan: BatchPlan,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: TrainConfig,
    heads: Sequence[str],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    ignore_index: int = 255,
    lambda_pseudo: float | None = None,
) -> dict[str, torch.Tensor]:
    """One optimizer step on one loaded batch; returns the detached losses.

    ``lambda_pseudo`` defaults to ``cfg.loss.lambda_pseudo`` (the loop passes the ramped-up value).
    """
    if lambda_pseudo is None:
        lambda_pseudo = cfg.loss.lambda_pseudo
    rgb = batch["rgb"].to(device, non_blocking=True)
    depth = batch["depth"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    pseudo = None
    if bool(plan.pseudo.any()):
        if teacher is None:
            raise ValueError(f"framework {cfg.framework!r} needs a teacher for its pseudo-labels")
        rows = plan.teacher_rows().to(device)
        with torch.no_grad(), autocast(device, cfg.precision):
            t_logits = teacher.module(rgb[rows], depth[rows])["ensemble"]
        pseudo = torch.full_like(label, ignore_index)
        pseudo[rows] = pseudo_labels(t_logits.float())
    src = plan.source.to(device)
    with autocast(device, cfg.precision):
        out = net(rgb[src], depth[src], plan.present.to(device))
    losses = compute_losses(out, plan, label, pseudo, heads=heads, ohem_thresh=cfg.loss.ohem_thresh,
                            ohem_min_kept=cfg.loss.ohem_min_kept, lambda_pseudo=lambda_pseudo,
                            ignore_index=ignore_index)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


def average_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over DDP ranks.

    Each rank updates them from its own shard; averaging after every step keeps
    the student, hence the EMA teacher and the validated weights, identical on
    every rank (DDP itself only averages gradients).
    """
    if world_size <= 1:
        return
    for b in module.buffers():
        if b.dtype.is_floating_point:
            dist_utils.all_reduce_sum(b.data)
            b.data.div_(world_size)


# --- resumable state ----------------------------------------------------------------------------


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(module, "module", module)
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_state(
    state_dir: Path,
    *,
    step: int,
    student: torch.nn.Module,
    teacher: EMATeacher | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: dict[str, Any],
) -> None:
    """Write the state after ``step`` completed steps; ``manifest.json``, written last, commits it.

    Weights are safetensors; the optimizer (tensors, numbers, strings) goes
    through ``torch.save`` and is read back with ``weights_only=True``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{step:08d}"
    files = {"student": f"student-{tag}.safetensors", "optimizer": f"optimizer-{tag}.pt"}
    atomic_write_bytes(state_dir / files["student"], st_save(_tensors(student)))
    if teacher is not None:
        files["teacher"] = f"teacher-{tag}.safetensors"
        atomic_write_bytes(state_dir / files["teacher"], st_save(_tensors(teacher.module)))
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}}, buf)
    atomic_write_bytes(state_dir / files["optimizer"], buf.getvalue())
    manifest = {"format": STATE_FORMAT, "step": step, "files": files, **progress}
    atomic_write_bytes(state_dir / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    keep = set(files.values()) | {"manifest.json"}
    for p in state_dir.iterdir():  # older states and leftovers of interrupted writes
        if p.name not in keep and p.is_file():
            p.unlink(missing_ok=True)


def read_manifest(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable training state manifest ({e})") from e
    if manifest.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: unsupported state format {manifest.get('format')!r}, expected {STATE_FORMAT!r}")
    return manifest


def load_state(
    state_dir: Path,
    *,
    student: torch.nn.Module,
    teacher: EMATeacher | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    """Restore everything :func:`save_state` wrote; returns the manifest."""
    manifest = read_manifest(state_dir)
    files = manifest["files"]

    def weights(name: str) -> dict[str, torch.Tensor]:
        path = state_dir / files[name]
        try:
            return st_load_file(str(path))
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path}: cannot read {name} weights ({e})") from e

    getattr(student, "module", student).load_state_dict(weights("student"), strict=True)
    if teacher is not None:
        if "teacher" not in files:
            raise ValueError(f"{state_dir}: the saved run has no teacher but framework needs one")
        teacher.load_state_dict(weights("teacher"))
    path = state_dir / files["optimizer"]
    try:
        opt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read optimizer state ({e})") from e
    optimizer.load_state_dict(opt["optimizer"])
    if scaler is not None and scaler.is_enabled() and opt.get("scaler"):
        scaler.load_state_dict(opt["scaler"])
    return manifest


# --- logging ------------------------------------------------------------------------------------


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop records after ``step`` (written by an interrupted run past its last saved state)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves its state and returns at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()  # DataLoader workers inherit the handler; only this process reacts

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after this step (state will be saved); repeat to abort", signum)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --- the loop -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # completed steps
    finished: bool  # reached max_iters (False: stopped early, resumable)
    best_metric: str
    best_value: float | None
    best_step: int | None
    last_val: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # the logged training records


def _check_fresh_out(out: Path) -> None:
    taken = [p for p in ("state", "metrics.jsonl", "model.safetensors") if (out / p).exists()]
    if taken:
        raise FileExistsError(f"{out}: already holds a run ({', '.join(taken)}); "
                              f"continue it with --resume {out} or choose a new --out")


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir``; with ``resume`` continue the state saved there.

    ``stop_after``: return after this many steps of this call, with the state
    saved (as on SIGINT/SIGTERM); ``--resume`` continues it.
    """
    env = dist_utils.init_from_env(device)
    dev, rank, world, is_main = env.device, env.rank, env.world_size, env.is_main
    out = Path(out_dir)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("'precision' fp16 needs CUDA; use bf16 or fp32 on the CPU", key="precision")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if not resume:
        _check_fresh_out(out)
    dist_utils.barrier()  # nobody writes before every rank has checked the output directory

    # Data ------------------------------------------------------------------------------------
    labeled = open_split(cfg.data, "train_labeled", labeled=True)
    unlabeled = open_split(cfg.data, "train_unlabeled", labeled=False) if cfg.uses_unlabeled else None
    classes: ClassInfo = labeled.classes
    if len(labeled) == 0:
        raise DatasetError(f"{cfg.data.root}: split {cfg.data.train_labeled!r} has no samples")
    if unlabeled is not None and len(unlabeled) == 0:
        raise DatasetError(f"{cfg.data.root}: split {cfg.data.train_unlabeled!r} has no samples "
                           f"(framework {cfg.framework} needs unlabeled data; or set unlabeled_batch=0 for m3l)")
    pre = cfg.preprocessing(classes.ignore_index)
    ignore = pre.ignore_index
    transform = TrainTransform(cfg.data.crop_size, pre, scales=cfg.data.scales, flip=cfg.data.flip)
    n_lab, n_unl = cfg.labeled_batch, (cfg.unlabeled_batch if unlabeled is not None else 0)
    val_loader = None
    if cfg.eval_every > 0:
        val_set = open_split(cfg.data, "val", labeled=True, transform=EvalTransform(pre))
        if len(val_set) == 0:
            raise DatasetError(f"{cfg.data.root}: validation split {cfg.data.val!r} has no samples "
                               "(set eval_every=0 to train without validation)")
        val_loader = torch.utils.data.DataLoader(
            val_set, batch_size=cfg.data.val_batch, sampler=dist_utils.ShardSampler(len(val_set)),
            collate_fn=collate_eval, num_workers=cfg.data.num_workers)

    # Model, teacher, optimizer ----------------------------------------------------------------
    try:
        model_cfg = cfg.model.build(classes.num_classes)
    except ValueError as e:
        raise ConfigError(f"{e} ({cfg.data.root})", key="model.num_classes") from e
    torch.manual_seed(derive_seed(cfg.seed, _TAG_INIT))  # same initial weights on every rank
    student = LinearFusionSegFormer(model_cfg)
    if cfg.model.pretrained and not resume:  # on resume the saved state replaces both
        student.load_pretrained(cfg.model.pretrained)
        log.info("loaded ImageNet encoder weights from %s", cfg.model.pretrained)
    if cfg.model.init and not resume:
        fresh = init_from_checkpoint(student, cfg.model.init)
        log.info("initialised from %s%s", cfg.model.init, f" (kept fresh: {', '.join(fresh)})" if fresh else "")
    student.to(dev).train()
    teacher = EMATeacher(student, alpha=cfg.loss.alpha_ema) if cfg.uses_teacher else None
    o = cfg.optim
    optimizer = build_optimizer(student, lr=o.lr, weight_decay=o.weight_decay, decoder_lr_mult=o.decoder_lr_mult,
                                norm_weight_decay=o.norm_weight_decay, betas=o.betas)
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
    heads = heads_for(model_cfg.modalities)
    conditions = conditions_for(model_cfg)
    metric = cfg.resolved_val_metric()
    amp_dtype = PRECISIONS[cfg.precision] if cfg.precision != "fp32" else None

    start, best_value, best_step = 0, None, None
    if resume:
        manifest = load_state(out / "state", student=student, teacher=teacher, optimizer=optimizer, scaler=scaler)
        start = int(manifest["step"])
        best_value, best_step = manifest.get("best_value"), manifest.get("best_step")
        if manifest.get("world_size", world) != world:
            log.warning("resuming a %s-process run with %d processes: the data order changes",
                        manifest.get("world_size"), world)
        log.info("resumed %s at step %d of %d", out, start, cfg.max_iters)
    net: torch.nn.Module = student
    if world > 1:
        # Depthwise-conv weight grads come back with a different stride on their size-1 axis, which
        # DDP reports once per process; it only costs a copy. Not an error.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        # Buffers are averaged after every step instead (average_buffers), so no broadcast here.
        net = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False,
            gradient_as_bucket_view=True)

    metrics_path = out / "metrics.jsonl"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
        if resume:
            _truncate_jsonl(metrics_path, start)

    def checkpoint(path: Path, step: int, val: dict[str, Any] | None) -> None:
        model = teacher.module if cfg.eval_model == "teacher" else student
        save_checkpoint(path, model, class_names=classes.names, palette=classes.palette, preprocessing=pre,
                        extra={"framework": cfg.framework, "step": step, "eval_model": cfg.eval_model,
                               "val_metric": metric, "val": val, "train_config": cfg.to_dict()})

    def progress_record() -> dict[str, Any]:
        return {"best_metric": metric, "best_value": best_value, "best_step": best_step,
                "world_size": world, "framework": cfg.framework}

    loader = torch.utils.data.DataLoader(
        StepDataset(labeled, unlabeled, transform),
        batch_sampler=StepSampler(start=start, stop=cfg.max_iters, sizes=(len(labeled), len(unlabeled) if unlabeled is not None else 0),
                                  batches=(n_lab, n_unl), seed=cfg.seed, rank=rank, world_size=world),
        collate_fn=collate, num_workers=cfg.data.num_workers, pin_memory=dev.type == "cuda",
        persistent_workers=False)

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=cfg.max_iters, initial=start, disable=not (is_main and cfg.progress),
               desc=cfg.framework, unit="it", dynamic_ncols=True)
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, sup, pseudo, count
    history: list[dict[str, float]] = []
    last_val = None
    done = start
    tick = time.perf_counter()
    log.info("training %s (%s, %s) for %d steps on %d process(es), %s; batch %d labeled + %d unlabeled per rank",
             cfg.framework, model_cfg.backbone, "+".join(model_cfg.modalities), cfg.max_iters, world, dev,
             n_lab, n_unl)
    with _StopFlag() as stop, logging_redirect_tqdm():
        for step, batch in enumerate(loader, start):
            # Everything random in this step derives from (seed, step, rank).
            torch.manual_seed(derive_seed(cfg.seed, _TAG_TORCH, step, rank))
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, _TAG_MASK, step, rank))
            plan = plan_batch(cfg.framework, n_lab, n_unl, gen, cfg.loss.mask_probs)
            lrs = set_lr(optimizer, step, cfg.max_iters, o.poly_power)
            lam = pseudo_weight(step, cfg.loss.lambda_pseudo, cfg.loss.pseudo_rampup)
            losses = train_step(net, teacher, batch, plan, optimizer, cfg=cfg, heads=heads, device=dev,
                                scaler=scaler, ignore_index=ignore, lambda_pseudo=lam)
            average_buffers(student, world)  # identical BatchNorm statistics on every rank
            if teacher is not None:
                teacher.update(student, step)
            sums += torch.stack([losses["loss"], losses["sup"], losses["pseudo"],
                                 torch.ones((), device=dev)]).double()
            done = step + 1
            bar.update(1)

            if done % cfg.log_every == 0 or done == cfg.max_iters:
                dist_utils.all_reduce_sum(sums)
                n = float(sums[3])
                rec = {"step": done, "lr": lrs["encoder"], "lr_decoder": lrs["decoder"],
                       "loss": float(sums[0]) / n, "loss_sup": float(sums[1]) / n,
                       "loss_pseudo": float(sums[2]) / n, "lambda_pseudo": lam if cfg.uses_teacher else 0.0,
                       "sec_per_it": (time.perf_counter() - tick) / max(n / world, 1)}
                if not math.isfinite(rec["loss"]):
                    raise FloatingPointError(f"training loss is {rec['loss']} at step {done}; lower optim.lr "
                                             "or use precision fp32")
                history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}")
                if is_main:
                    _append_jsonl(metrics_path, rec)
                sums.zero_()
                tick = time.perf_counter()

            if cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.max_iters):
                model = teacher.module if cfg.eval_model == "teacher" else student
                cms = evaluate(model, val_loader, num_classes=classes.num_classes, conditions=conditions,
                               device=dev, amp_dtype=amp_dtype, ignore_index=ignore)
                last_val = summarize_results(cms, classes.names)
                picked = last_val[metric]["miou"] if last_val.get(metric) else None
                improved = picked is not None and (best_value is None or picked > best_value)
                if improved:
                    best_value, best_step = picked, done
                if is_main:
                    if improved:
                        checkpoint(out / "model.safetensors", done, last_val)
                    _append_jsonl(metrics_path, {"step": done, "val": last_val, "metric": metric,
                                                 "value": picked, "best": improved, "best_value": best_value})
                    log.info("step %d: val %s mIoU %s (best %s at step %s)", done, metric,
                             "n/a" if picked is None else f"{picked:.2f}",
                             "n/a" if best_value is None else f"{best_value:.2f}", best_step)
                tick = time.perf_counter()

            halt = torch.tensor([float(stop.requested or (stop_after is not None and done - start >= stop_after))],
                                device=dev)
            halt = bool(dist_utils.all_reduce_sum(halt).item() > 0) if world > 1 else bool(halt.item())
            if (cfg.save_every > 0 and done % cfg.save_every == 0) or done == cfg.max_iters or halt:
                if is_main:
                    save_state(out / "state", step=done, student=student, teacher=teacher, optimizer=optimizer,
                               scaler=scaler, progress=progress_record())
                dist_utils.barrier()
            if halt:
                break
    bar.close()
    finished = done >= cfg.max_iters
    if finished and is_main:
        checkpoint(out / "last.safetensors", done, last_val)
        if cfg.eval_every == 0:  # no validation: the final weights are the model
            checkpoint(out / "model.safetensors", done, None)
    dist_utils.barrier()
    log.info("%s at step %d; best %s %s at step %s -> %s", "finished" if finished else "stopped", done, metric,
             best_value, best_step, out)
    return TrainResult(out_dir=out, step=done, finished=finished, best_metric=metric, best_value=best_value,
                       best_step=best_step, last_val=last_val, history=history)
