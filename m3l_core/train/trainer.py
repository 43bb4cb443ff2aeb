"""The training loop shared by the five frameworks: supervised, modality_dropout, mean_teacher, m3l, cps.

:func:`train` reads top to bottom: data (checked frame by frame before step 1), model, teacher,
optimizer, an optional resume, then one loop over iterations. Each iteration

1. loads ``labeled_batch`` labeled (+ ``unlabeled_batch`` unlabeled) augmented crops
   (:mod:`m3l_core.train.steps` says which),
2. asks :func:`~m3l_core.train.masking.plan_batch` what the student sees and which
   row gets which loss (the only place where the frameworks differ),
3. labels the pseudo-label rows with the EMA teacher's ensemble (unmasked, eval mode),
4. runs ONE student forward and ONE backward, steps AdamW at the poly lr
   (:func:`~m3l_core.train.update.train_step`),
5. moves the teacher towards the student.

For ``cps`` the "student" is a :class:`~m3l_core.train.cps.CPSPair` of two networks, each
labelling the other's rows in the same forward (no teacher); the first network is validated
and exported, both are in the resumable state.

Every ``eval_every`` steps it validates on the val split and keeps the best
weights in ``RUN/model.safetensors``; every ``save_every`` steps it writes the
resumable state to ``RUN/state/`` (:mod:`m3l_core.train.run_state`). A non-finite
loss stops the run before its optimizer step, with the state saved.

Determinism: nothing random depends on history (see :mod:`m3l_core.train.steps`);
the masks and torch's global RNG (dropout, drop-path) derive from ``(seed, step, rank)``.
A resumed run therefore computes exactly what the uninterrupted run would have.

Multi-process (``torchrun``): the model is wrapped in DDP; batch sizes in the config are
per rank; each rank loads its own positions of every stream. Only rank 0 writes files.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from m3l_core import distributed as dist_utils
from m3l_core.checkpoint import atomic_write_bytes, save_checkpoint
from m3l_core.data.loading import make_loader, raise_failure
from m3l_core.data.transforms import EvalTransform, TrainTransform, collate
from m3l_core.evaluation import collate_eval, conditions_for, evaluate, summarize_results
from m3l_core.inference import PRECISIONS
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.train.config import ConfigError, TrainConfig, dump_config
from m3l_core.train.cps import CPSPair, build_cps_pair
from m3l_core.train.ema import EMATeacher
from m3l_core.train.init_weights import build_student
from m3l_core.train.losses import pseudo_weight
from m3l_core.train.masking import plan_batch
from m3l_core.train.optim import apply_group_settings, build_optimizer, set_lr
from m3l_core.train.run_state import (StopFlag, append_jsonl, check_fresh_out, clean_interrupted_writes,
                                      load_state, save_state, truncate_jsonl)
from m3l_core.train.steps import TAG_MASK, TAG_TORCH, StepDataset, StepSampler, derive_seed
from m3l_core.train.train_data import TrainData, open_train_data
from m3l_core.train.update import NonFiniteLossError, average_buffers, train_step

__all__ = ["train", "train_step", "average_buffers", "TrainResult", "NonFiniteLossError"]

log = logging.getLogger(__name__)


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
    interrupted: bool = False  # stopped by SIGINT/SIGTERM (state saved)


@dataclass
class _Run:
    """Everything the loop needs, built once by :func:`train`."""

    cfg: TrainConfig
    out: Path
    env: dist_utils.DistInfo
    data: TrainData
    student: LinearFusionSegFormer | CPSPair  # what is trained (saved in the state)
    net: torch.nn.Module
    teacher: EMATeacher | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    pre: Any
    model_cfg: ModelConfig
    val_loader: Any
    metric: str
    start: int = 0
    best_value: float | None = None
    best_step: int | None = None
    last_val: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def eval_model(self) -> torch.nn.Module:
        if self.cfg.eval_model == "teacher" and self.teacher is not None:
            return self.teacher.module
        return self.student.first if isinstance(self.student, CPSPair) else self.student

    def checkpoint(self, path: Path, step: int, val: dict[str, Any] | None) -> None:
        c = self.data.classes
        save_checkpoint(path, self.eval_model(), class_names=c.names, palette=c.palette, preprocessing=self.pre,
                        extra={"framework": self.cfg.framework, "step": step, "eval_model": self.cfg.eval_model,
                               "val_metric": self.metric, "val": val, "train_config": self.cfg.to_dict()})

    def save(self, step: int) -> None:
        if self.env.is_main:
            save_state(self.out / "state", step=step, student=self.student, teacher=self.teacher,
                       optimizer=self.optimizer, scaler=self.scaler,
                       progress={"best_metric": self.metric, "best_value": self.best_value,
                                 "best_step": self.best_step, "world_size": self.env.world_size,
                                 "framework": self.cfg.framework})
        dist_utils.barrier()

    def validate(self, done: int) -> None:
        c = self.data.classes
        amp_dtype = PRECISIONS[self.cfg.precision] if self.cfg.precision != "fp32" else None
        cms = evaluate(self.eval_model(), self.val_loader, num_classes=c.num_classes,
                       conditions=conditions_for(self.model_cfg), device=self.env.device, amp_dtype=amp_dtype,
                       ignore_index=self.pre.ignore_index)
        self.last_val = summarize_results(cms, c.names)
        picked = self.last_val[self.metric]["miou"] if self.last_val.get(self.metric) else None
        improved = picked is not None and (self.best_value is None or picked > self.best_value)
        if improved:
            self.best_value, self.best_step = picked, done
        if self.env.is_main:
            if improved:
                self.checkpoint(self.out / "model.safetensors", done, self.last_val)
            append_jsonl(self.metrics_path, {"step": done, "val": self.last_val, "metric": self.metric,
                                             "value": picked, "best": improved, "best_value": self.best_value})
            log.info("step %d: val %s mIoU %s (best %s at step %s)", done, self.metric,
                     "n/a" if picked is None else f"{picked:.2f}",
                     "n/a" if self.best_value is None else f"{self.best_value:.2f}", self.best_step)


def _setup(cfg: TrainConfig, out: Path, *, resume: bool, device: str) -> _Run:
    env = dist_utils.init_from_env(device)
    if cfg.precision == "fp16" and env.device.type != "cuda":
        raise ConfigError("'precision' fp16 needs CUDA; use bf16 or fp32 on the CPU", key="precision")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if not resume:
        check_fresh_out(out)
    elif env.is_main:
        clean_interrupted_writes(out)
    dist_utils.barrier()  # nobody writes before every rank has checked the output directory

    data = open_train_data(cfg, is_main=env.is_main)
    pre = cfg.preprocessing(data.classes.ignore_index)
    build = build_cps_pair if cfg.framework == "cps" else build_student
    student, model_cfg = build(cfg, data.classes, resume=resume)
    student.to(env.device).train()
    teacher = EMATeacher(student, alpha=cfg.loss.alpha_ema) if cfg.uses_teacher else None
    o = cfg.optim
    group_kw = dict(lr=o.lr, weight_decay=o.weight_decay, decoder_lr_mult=o.decoder_lr_mult,
                    norm_weight_decay=o.norm_weight_decay)
    optimizer = build_optimizer(student, betas=o.betas, **group_kw)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")
    val_loader = None
    if data.val is not None:
        data.val.transform = EvalTransform(pre)
        val_loader = make_loader(data.val, batch_size=cfg.data.val_batch, collate_fn=collate_eval,
                                 sampler=dist_utils.ShardSampler(len(data.val)), num_workers=cfg.data.num_workers)
    run = _Run(cfg=cfg, out=out, env=env, data=data, student=student, net=student, teacher=teacher,
               optimizer=optimizer, scaler=scaler, pre=pre, model_cfg=model_cfg, val_loader=val_loader,
               metric=cfg.resolved_val_metric())
    if resume:
        manifest = load_state(out / "state", student=student, teacher=teacher, optimizer=optimizer, scaler=scaler)
        apply_group_settings(optimizer, **group_kw)  # the config (and its --set) wins over the saved rates
        run.start = int(manifest["step"])
        run.best_value, run.best_step = manifest.get("best_value"), manifest.get("best_step")
        if manifest.get("world_size", env.world_size) != env.world_size:
            log.warning("resuming a %s-process run with %d processes: the data order changes",
                        manifest.get("world_size"), env.world_size)
        log.info("resumed %s at step %d of %d", out, run.start, cfg.max_iters)
    if env.world_size > 1:
        # Buffers are averaged after every step instead (average_buffers), so no broadcast here.
        run.net = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            broadcast_buffers=False, gradient_as_bucket_view=True)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
        if resume:
            truncate_jsonl(run.metrics_path, run.start)
    return run


def _train_loader(run: _Run) -> torch.utils.data.DataLoader:
    cfg, d = run.cfg, run.data
    transform = TrainTransform(cfg.data.crop_size, run.pre, scales=cfg.data.scales, flip=cfg.data.flip)
    n_unl = cfg.unlabeled_batch if d.unlabeled is not None else 0
    sampler = StepSampler(start=run.start, stop=cfg.max_iters,
                          sizes=(len(d.labeled), len(d.unlabeled) if d.unlabeled is not None else 0),
                          batches=(cfg.labeled_batch, n_unl), seed=cfg.seed, rank=run.env.rank,
                          world_size=run.env.world_size)
    return make_loader(StepDataset(d.labeled, d.unlabeled, transform), batch_sampler=sampler, collate_fn=collate,
                       num_workers=cfg.data.num_workers, pin_memory=run.env.device.type == "cuda",
                       persistent_workers=False)


def _loop(run: _Run, stop: StopFlag, stop_after: int | None, bar: Any) -> int:
    """Run the steps; returns the number of completed steps."""
    cfg, env, dev = run.cfg, run.env, run.env.device
    n_lab = cfg.labeled_batch
    n_unl = cfg.unlabeled_batch if run.data.unlabeled is not None else 0
    heads = run.model_cfg.heads  # the outputs the fusion trains (URN: the ensemble only)
    # Averaged per log interval: (train_step key, metrics.jsonl name); a count comes last.
    logged = [("loss", "loss"), ("sup", "loss_sup"), ("pseudo", "loss_pseudo")]
    if cfg.loss.token_l1 > 0:
        logged.append(("token_l1", "loss_token_l1"))
    if cfg.uses_pseudo:
        logged.append(("pseudo_kept", "pseudo_kept"))
    sums = torch.zeros(len(logged) + 1, dtype=torch.float64, device=dev)
    weight = cfg.loss.cps_weight if cfg.framework == "cps" else cfg.loss.lambda_pseudo
    done = run.start
    tick = time.perf_counter()
    for step, batch in enumerate(_train_loader(run), run.start):
        batch = raise_failure(batch)
        # Everything random in this step derives from (seed, step, rank).
        torch.manual_seed(derive_seed(cfg.seed, TAG_TORCH, step, env.rank))
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, TAG_MASK, step, env.rank))
        plan = plan_batch(cfg.framework, n_lab, n_unl, gen, cfg.loss.mask_probs, mask=cfg.loss.cps_modality_dropout)
        lrs = set_lr(run.optimizer, step, cfg.max_iters, cfg.optim.poly_power)
        lam = pseudo_weight(step, weight, cfg.loss.pseudo_rampup)
        try:
            losses = train_step(run.net, run.teacher, batch, plan, run.optimizer, cfg=cfg, heads=heads, device=dev,
                                scaler=run.scaler, ignore_index=run.pre.ignore_index, lambda_pseudo=lam)
        except NonFiniteLossError as e:
            run.save(step)
            raise NonFiniteLossError(
                f"{e} at step {step + 1} (lr {lrs['encoder']:.3g}); the step was not applied and the state after "
                f"step {step} is saved in {run.out / 'state'}. Lower the learning rate and continue with "
                f"--resume {run.out} --set optim.lr=..., or use precision fp32 (if the resumed run stops again at "
                f"once, the weights themselves diverged: start a new run)") from None
        average_buffers(run.student, env.world_size)  # identical BatchNorm statistics on every rank
        if run.teacher is not None:
            run.teacher.update(run.student, step)
        sums += torch.stack([*(losses[k].to(dev) for k, _ in logged), torch.ones((), device=dev)]).double()
        done = step + 1
        bar.update(1)

        if done % cfg.log_every == 0 or done == cfg.max_iters:
            dist_utils.all_reduce_sum(sums)
            n = float(sums[-1])
            rec = {"step": done, "lr": lrs["encoder"], "lr_decoder": lrs["decoder"],
                   **{name: float(v) / n for (_, name), v in zip(logged, sums)},
                   "lambda_pseudo": lam if cfg.uses_pseudo else 0.0,
                   "sec_per_it": (time.perf_counter() - tick) / max(n / env.world_size, 1)}
            run.history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}")
            if env.is_main:
                append_jsonl(run.metrics_path, rec)
            sums.zero_()
            tick = time.perf_counter()

        if cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.max_iters):
            run.validate(done)
            tick = time.perf_counter()

        halt = torch.tensor([float(stop.requested or (stop_after is not None and done - run.start >= stop_after))],
                            device=dev)
        halt = bool(dist_utils.all_reduce_sum(halt).item() > 0) if env.world_size > 1 else bool(halt.item())
        if (cfg.save_every > 0 and done % cfg.save_every == 0) or done == cfg.max_iters or halt:
            run.save(done)
        if halt:
            break
    return done


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
    out = Path(out_dir)
    run = _setup(cfg, out, resume=resume, device=device)
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    log.info("training %s (%s, %s) for %d steps on %d process(es), %s; batch %d labeled + %d unlabeled per rank",
             cfg.framework, run.model_cfg.backbone, "+".join(run.model_cfg.modalities), cfg.max_iters,
             run.env.world_size, run.env.device, cfg.labeled_batch,
             cfg.unlabeled_batch if run.data.unlabeled is not None else 0)
    bar = tqdm(total=cfg.max_iters, initial=run.start, disable=not (run.env.is_main and cfg.progress),
               desc=cfg.framework, unit="it", dynamic_ncols=True)
    with StopFlag() as stop, logging_redirect_tqdm(), warnings.catch_warnings():
        # Depthwise-conv weight grads come back from DDP with a different stride on their size-1
        # axis, reported once per process; it only costs a copy. Silenced for this loop only.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        try:
            done = _loop(run, stop, stop_after, bar)
        finally:
            bar.close()
    finished = done >= cfg.max_iters
    if finished and run.env.is_main:
        run.checkpoint(out / "last.safetensors", done, run.last_val)
        if cfg.eval_every == 0:  # no validation: the final weights are the model
            run.checkpoint(out / "model.safetensors", done, None)
    dist_utils.barrier()
    log.info("%s at step %d; best %s %s at step %s -> %s", "finished" if finished else "stopped", done, run.metric,
             run.best_value, run.best_step, out)
    return TrainResult(out_dir=out, step=done, finished=finished, best_metric=run.metric, best_value=run.best_value,
                       best_step=run.best_step, last_val=run.last_val, history=run.history,
                       interrupted=stop.requested and not finished)
