"""Evaluate a checkpoint with RGB-D, RGB only and depth only input, and report MM-Robust.

    python training/evaluate.py --checkpoint model.safetensors --data data/synthetic --split test --out eval/
    torchrun --nproc_per_node=2 training/evaluate.py --checkpoint model.safetensors --data data/synthetic

Everything about the model (architecture, preprocessing, classes) comes from
the checkpoint. The protocol is the paper's: inputs resized to the model's
input size, single scale, logits upsampled bilinearly to the label size.
Under torchrun every rank evaluates a disjoint shard (no padded duplicates)
and the confusion matrices are summed, so the result equals a single-process
run exactly. The main rank prints the table and writes metrics.json,
metrics.md, metrics.png and examples.png to --out.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from m3l_core import distributed as dist_utils
from m3l_core.checkpoint import CheckpointError, load_checkpoint
from m3l_core.data.folder import DatasetError, FolderDataset
from m3l_core.data.transforms import EvalTransform
from m3l_core.evaluation import collate_eval, evaluate, summarize_results
from m3l_core.report import format_table, write_report

log = logging.getLogger("evaluate")

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class IndexedEval(torch.utils.data.Dataset):
    """``EvalTransform(dataset.load(i))`` plus the sample index, so examples can be re-read later."""

    def __init__(self, dataset: FolderDataset, transform: EvalTransform) -> None:
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

    def __call__(self, batch: dict[str, Any], preds: dict[str, Any]) -> None:
        for j, index in enumerate(batch["index"].tolist()):
            if len(self.items) >= self.n:
                return
            self.items.append({"index": index, "preds": {c: p[j].to("cpu", torch.uint8).numpy() for c, p in preds.items()}})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="M3L-ROS .safetensors checkpoint")
    p.add_argument("--data", required=True, help="dataset root in the folder format (classes.yaml, splits/, ...)")
    p.add_argument("--split", default="test", help="split name: splits/<split>.txt")
    p.add_argument("--out", default=None, help="output directory (default: <checkpoint dir>/<stem>_eval_<split>)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward (per rank)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS),
                   help="autocast dtype for the forward; fp16 needs CUDA")
    p.add_argument("--num-examples", type=int, default=4, help="rows in examples.png (0 = none)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.workers < 0 or args.num_examples < 0:
        p.error("--workers and --num-examples must be >= 0")
    return args


def check_classes(ckpt: Any, dataset: FolderDataset, checkpoint_path: str) -> None:
    """The dataset's classes.yaml must describe the checkpoint's classes."""
    classes_file = dataset.root / "classes.yaml"
    n_ckpt = ckpt.model_config.num_classes
    if dataset.classes.num_classes != n_ckpt:
        raise SystemExit(f"error: {classes_file} lists {dataset.classes.num_classes} classes but checkpoint "
                         f"{checkpoint_path} predicts {n_ckpt} classes; evaluate on data with the same classes")
    if list(dataset.classes.names) != list(ckpt.class_names):
        log.warning("class names differ between %s %s and checkpoint %s %s; using the checkpoint's",
                    classes_file, dataset.classes.names, checkpoint_path, ckpt.class_names)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the evaluation; returns the results dict (same on every rank)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        env = dist_utils.init_from_env(args.device)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from e
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        amp_dtype = PRECISIONS[args.precision]
        if args.precision == "fp16" and env.device.type != "cuda":
            raise SystemExit("error: --precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")

        ckpt = load_checkpoint(args.checkpoint, device="cpu")
        model = ckpt.model.to(env.device).eval()
        dataset = FolderDataset(args.data, args.split)
        if not dataset.labeled:
            raise SystemExit(f"error: split {args.split!r} of {args.data} is unlabeled; evaluation needs labels")
        if len(dataset) == 0:
            raise SystemExit(f"error: {dataset.root / 'splits' / (args.split + '.txt')} lists no samples")
        check_classes(ckpt, dataset, args.checkpoint)

        sampler = dist_utils.ShardSampler(len(dataset), rank=env.rank, world_size=env.world_size)
        loader = torch.utils.data.DataLoader(
            IndexedEval(dataset, EvalTransform(ckpt.preprocessing)),
            batch_size=args.batch_size,
            sampler=sampler,
            num_workers=args.workers,
            collate_fn=collate_eval,
            pin_memory=env.device.type == "cuda",
        )
        collector = ExampleCollector(args.num_examples) if env.is_main and args.num_examples else None
        log.info("evaluating %s on %s/%s: %d samples, %d rank(s), conditions from %s model",
                 args.checkpoint, args.data, args.split, len(dataset), env.world_size,
                 "+".join(ckpt.model_config.modalities))
        cms = evaluate(model, loader, num_classes=ckpt.model_config.num_classes, device=env.device,
                       amp_dtype=amp_dtype, ignore_index=dataset.classes.ignore_index, progress=True,
                       on_batch=collector)
        results = summarize_results(cms, ckpt.class_names)

        if env.is_main:
            out = Path(args.out) if args.out else \
                Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}_eval_{args.split}")
            info = {
                "checkpoint": str(args.checkpoint),
                "data": str(args.data),
                "split": args.split,
                "num_samples": len(dataset),
                "world_size": env.world_size,
                "precision": args.precision,
                "backbone": ckpt.model_config.backbone,
                "modalities": list(ckpt.model_config.modalities),
                "missing_token": ckpt.model_config.missing_token,
                "input_size": list(ckpt.preprocessing.input_size),
                "class_names": list(ckpt.class_names),
                "confusion_matrices": {c: cm.tolist() for c, cm in cms.items()},
            }
            examples = []
            for item in (collector.items if collector else []):
                raw = dataset.load(item["index"])
                examples.append({**raw, "preds": item["preds"]})
            paths = write_report(out, results, info=info, examples=examples, palette=ckpt.palette,
                                 class_names=ckpt.class_names, ignore_index=dataset.classes.ignore_index)
            print(format_table(results))
            print("wrote " + ", ".join(str(p) for p in paths.values()))
        dist_utils.barrier()
        return results
    except (CheckpointError, DatasetError) as e:  # messages already name the file
        raise SystemExit(f"error: {e}") from e
    finally:
        dist_utils.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
