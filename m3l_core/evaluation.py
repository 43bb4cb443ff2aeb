"""The shared evaluation loop: confusion matrices under three input conditions.

Protocol (paper Sec. 4.1): inputs are resized to the model's input size
(``EvalTransform`` does that), single scale, no flip, no sliding window; the
ensemble logits are upsampled bilinearly to the label size and argmax-ed.

Each condition only sets the ``present`` mask; the model itself replaces a
missing modality (learned token, or zeros for the baselines). One pass over
the data runs every condition per batch. Confusion matrices are summed over
this rank's shard and then all-reduced over DDP ranks; scores are computed
from the reduced matrix only (never averaged per rank).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from m3l_core import distributed as dist_utils
from m3l_core.data.folder import DatasetError
from m3l_core.data.loading import make_loader, raise_failure
from m3l_core.data.transforms import EvalTransform
from m3l_core.metrics import confusion_matrix, summarize
from m3l_core.model import upsample_logits
from m3l_core.vocab import CONDITION_PRESENCE as _PRESENT  # columns [rgb, depth]
from m3l_core.vocab import CONDITIONS, MODALITIES

log = logging.getLogger(__name__)

OnBatch = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


def present_mask(condition: str, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, 2)`` bool mask, columns [rgb, depth], for one evaluation condition."""
    if condition not in _PRESENT:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    row = torch.tensor(_PRESENT[condition], dtype=torch.bool, device=device)
    return row.expand(batch_size, 2).clone()


def conditions_for(model_config: Any) -> tuple[str, ...]:
    """Conditions a model can be evaluated on: all three for RGB-D, its own for uni-modal."""
    mods = tuple(getattr(model_config, "modalities", MODALITIES))
    return tuple(c for c in CONDITIONS
                 if set(mods) == set(MODALITIES) or _PRESENT[c] == tuple(m in mods for m in MODALITIES))


def collate_eval(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate ``EvalTransform`` outputs.

    Tensors of equal shape are stacked. Labels of different sizes (images of
    different resolutions) stay a list of ``(H, W)`` tensors; :func:`evaluate`
    handles both. Non-tensor values (``name``) become lists.
    """
    if not batch:
        raise ValueError("empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        if key == "label" and any(v is None for v in vals):
            names = [b.get("name", "?") for b in batch]
            raise ValueError(f"evaluation needs labels, but sample(s) {names} have none")
        if all(isinstance(v, torch.Tensor) for v in vals):
            if all(v.shape == vals[0].shape for v in vals):
                out[key] = torch.stack(vals)
            elif key == "label":
                out[key] = vals
            else:
                shapes = sorted({tuple(v.shape) for v in vals})
                raise ValueError(f"cannot batch '{key}' tensors of shapes {shapes}; inputs must be resized "
                                 f"to the model input size (EvalTransform)")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # Evaluate the bare module: DDP's forward would try to sync buffers across
    # ranks that may run a different number of batches.
    return getattr(model, "module", model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    num_classes: int,
    conditions: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    ignore_index: int = 255,
    progress: bool = False,
    on_batch: OnBatch | None = None,
) -> dict[str, torch.Tensor]:
    """Confusion matrix (``(C, C)`` int64, CPU) per condition, summed over all DDP ranks.

    Args:
        model: a ``LinearFusionSegFormer`` (or DDP-wrapped); evaluated in eval
            mode, its previous train/eval mode is restored afterwards.
        loader: yields dicts with ``rgb`` (B,3,h,w), ``depth`` (B,1,h,w) at the
            model input size and ``label`` (B,H,W) int64 at label size (or a
            list of (H,W) tensors), e.g. ``DataLoader(..., collate_fn=collate_eval)``.
        conditions: subset of :data:`CONDITIONS`; default from the model config.
        amp_dtype: e.g. ``torch.bfloat16`` to run the forward under autocast.
        progress: show a tqdm bar (main rank only).
        on_batch: ``on_batch(batch, preds)`` after each batch, where
            ``preds[condition]`` is indexable per sample and gives an (H, W)
            int64 prediction at label size, on ``device``.

    Under DDP every rank must call this (the reduction is collective), each
    with its own shard of the data (see ``distributed.ShardSampler``).
    """
    net = _unwrap(model)
    device = torch.device(device)
    cfg = getattr(net, "config", None)
    align_corners = bool(getattr(cfg, "align_corners", False))  # the checkpoint's upsampling rule
    if conditions is None:
        conditions = conditions_for(cfg) if cfg is not None else CONDITIONS
    conditions = tuple(conditions)
    for c in conditions:
        if c not in _PRESENT:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {c!r}")
    cms = {c: torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) for c in conditions}

    it = loader
    if progress and dist_utils.is_main():
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True)

    was_training = net.training
    net.eval()
    try:
        for batch in it:
            batch = raise_failure(batch)  # a DataLoader worker's DatasetError, as one line
            rgb = batch["rgb"].to(device, non_blocking=True)
            depth = batch["depth"].to(device, non_blocking=True)
            labels = batch["label"]
            b = rgb.shape[0]
            preds: dict[str, Any] = {}
            for cond in conditions:
                present = present_mask(cond, b, device)
                with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    out = net(rgb, depth, present=present)
                if "ensemble" not in out:
                    raise KeyError(f"model output has no 'ensemble' logits (keys {sorted(out)})")
                logits = out["ensemble"].float()
                if isinstance(labels, torch.Tensor):
                    lab = labels.to(device, non_blocking=True)
                    pred = _predict(logits, lab.shape[-2:], align_corners)
                    cms[cond] += confusion_matrix(pred, lab, num_classes, ignore_index)
                else:
                    pred = []
                    for i, lab in enumerate(labels):
                        lab = lab.to(device, non_blocking=True)
                        p = _predict(logits[i:i + 1], lab.shape[-2:], align_corners)[0]
                        cms[cond] += confusion_matrix(p, lab, num_classes, ignore_index)
                        pred.append(p)
                preds[cond] = pred
            if on_batch is not None:
                on_batch(batch, preds)
    finally:
        net.train(was_training)

    for cond in conditions:
        dist_utils.all_reduce_sum(cms[cond])
    return {c: cm.cpu() for c, cm in cms.items()}


def _predict(logits: torch.Tensor, size: torch.Size | tuple[int, int], align_corners: bool) -> torch.Tensor:
    """(B, C, h, w) logits -> (B, H, W) int64 argmax after the model's bilinear upsampling to ``size``."""
    return upsample_logits(logits, size, align_corners=align_corners).argmax(1)


def mm_robust(results: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """MM-Robust: the mean of the RGB-D, RGB-only and depth-only scores.

    ``results`` maps condition -> :func:`metrics.summarize` dict (percent).
    Returns the same keys (``miou``, ``macc``, ``pixel_acc`` and a per-class
    mean of IoUs), or None when a condition is missing (uni-modal models,
    the paper's "-").
    """
    if any(results.get(c) is None for c in CONDITIONS):
        return None
    rs = [results[c] for c in CONDITIONS]

    def mean(vals: list[float | None]) -> float | None:
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        return sum(vals) / len(vals) if len(vals) == len(CONDITIONS) else None

    names = list(rs[0]["per_class_iou"])
    return {
        "miou": mean([r["miou"] for r in rs]),
        "macc": mean([r["macc"] for r in rs]),
        "pixel_acc": mean([r["pixel_acc"] for r in rs]),
        # Mean over the conditions in which the class occurs.
        "per_class_iou": {n: _mean_present([r["per_class_iou"].get(n) for r in rs]) for n in names},
    }


def _mean_present(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize_results(cms: Mapping[str, torch.Tensor], class_names: Sequence[str]) -> dict[str, Any]:
    """Confusion matrices per condition -> ``{rgbd, rgb, depth, mm_robust}`` (percent; None if not evaluated)."""
    results: dict[str, Any] = {c: (summarize(cms[c], class_names) if c in cms else None) for c in CONDITIONS}
    results["mm_robust"] = mm_robust(results)
    return results


# --- evaluating a checkpoint on a dataset ---------------------------------------------------------


class IndexedEval(torch.utils.data.Dataset):
    """``EvalTransform(dataset.load(i))`` plus the sample index, so examples can be re-read later."""

    def __init__(self, dataset: Any, transform: EvalTransform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = self.transform(self.dataset.load(i))
        out["index"] = i
        return out


class ExampleCollector:
    """``on_batch`` hook keeping the predictions of the first ``n`` samples (CPU, uint8)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.items: list[dict[str, Any]] = []

    def __call__(self, batch: Mapping[str, Any], preds: Mapping[str, Any]) -> None:
        for j, index in enumerate(batch["index"].tolist()):
            if len(self.items) >= self.n:
                return
            self.items.append({"index": index, "preds": {c: p[j].to("cpu", torch.uint8).numpy() for c, p in preds.items()}})


def check_classes(class_names: Sequence[str], dataset: Any, *, checkpoint: str, source: str) -> None:
    """The dataset must have the checkpoint's class count (names may differ: a warning)."""
    n_data, n_ckpt = dataset.classes.num_classes, len(class_names)
    if n_data != n_ckpt:
        raise DatasetError(f"{source} lists {n_data} classes but checkpoint {checkpoint} predicts {n_ckpt} "
                           "classes; evaluate on data with the same classes")
    if list(dataset.classes.names) != list(class_names):
        log.warning("class names differ between %s %s and checkpoint %s %s; using the checkpoint's",
                    source, dataset.classes.names, checkpoint, list(class_names))


@dataclass
class EvalRun:
    results: dict[str, Any]  # summarize_results()
    cms: dict[str, torch.Tensor]
    examples: list[dict[str, Any]] = field(default_factory=list)  # raw samples + "preds", main rank only


def evaluate_dataset(
    ckpt: Any,
    dataset: Any,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    num_examples: int = 0,
    progress: bool = False,
) -> EvalRun:
    """Evaluate a loaded checkpoint (:class:`m3l_core.checkpoint.Checkpoint`) on a raw labeled dataset.

    Under DDP every rank calls this on the same dataset; each evaluates its shard and the
    confusion matrices are summed, so the result equals a single-process run exactly.
    """
    device = torch.device(device)
    sampler = dist_utils.ShardSampler(len(dataset))
    loader = make_loader(IndexedEval(dataset, EvalTransform(ckpt.preprocessing)), batch_size=batch_size,
                         sampler=sampler, num_workers=workers, collate_fn=collate_eval,
                         pin_memory=device.type == "cuda")
    collector = ExampleCollector(num_examples) if dist_utils.is_main() and num_examples else None
    model = ckpt.model.to(device).eval()
    cms = evaluate(model, loader, num_classes=ckpt.model_config.num_classes, device=device, amp_dtype=amp_dtype,
                   ignore_index=dataset.classes.ignore_index, progress=progress, on_batch=collector)
    examples = [{**dataset.load(item["index"]), "preds": item["preds"]} for item in (collector.items if collector else [])]
    return EvalRun(results=summarize_results(cms, ckpt.class_names), cms=cms, examples=examples)
