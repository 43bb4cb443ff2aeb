"""Evaluate a checkpoint with RGB-D, RGB only and depth only input, and report MM-Robust.

    m3l-evaluate --checkpoint model.safetensors --data data/synthetic --split test --out eval/
    m3l-evaluate --checkpoint st.safetensors --data /data/stanford --format stanford --split splits/val.txt
    m3l-evaluate --checkpoint sun.safetensors --data /data/sun --format sun --split splits/test.txt
    torchrun --nproc_per_node=2 training/evaluate.py --checkpoint model.safetensors --data data/synthetic

(``python training/evaluate.py`` is the same command.) Everything about the model
(architecture, preprocessing, input size, classes) comes from the checkpoint. The protocol is the
paper's: inputs resized to the model's input size (printed at the start; a training run sets it
with ``data.eval_size``, default ``data.crop_size``), single scale, logits upsampled bilinearly to
the label size. Every listed frame is checked first (``--check``). Under torchrun every rank
evaluates a disjoint shard (no padded duplicates) and the confusion matrices are summed, so the
result equals a single-process run exactly. The main rank prints the table and writes
metrics.json, metrics.md, metrics.png and examples.png to --out.
Exit codes: 0 done, 1 runtime failure (bad data or checkpoint), 2 usage error, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from m3l_core import distributed as dist_utils
from m3l_core.checkpoint import CheckpointError, load_checkpoint
from m3l_core.cli.common import EXIT_FAILURE, EXIT_OK, add_threads_arg, run_guarded, setup_logging, setup_threads
from m3l_core.data.check import CHECK_LEVELS, check_dataset
from m3l_core.data.datasets import DATA_FORMATS, DatasetSpec, open_dataset, split_path
from m3l_core.data.folder import DatasetError
from m3l_core.evaluation import check_classes, evaluate_dataset
from m3l_core.vocab import PRECISIONS

log = logging.getLogger("m3l_core.cli.evaluate")


def parse_args(args: Sequence[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="m3l-evaluate", description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="M3L-ROS .safetensors checkpoint")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--format", default="folder", choices=DATA_FORMATS,
                   help="folder (classes.yaml, splits/<split>.txt) or the paper's stanford / sun split files")
    p.add_argument("--split", default=None,
                   help="folder: split name (default test); stanford/sun: split file relative to --data (required)")
    p.add_argument("--semantic-labels", default="", help="stanford: semantic_labels.json (default DATA/...)")
    p.add_argument("--no-depth-bitshift", action="store_true", help="sun: depth PNGs hold plain millimetres")
    p.add_argument("--check", default="full", choices=CHECK_LEVELS, help="up-front check of every frame")
    p.add_argument("--out", default=None, help="output directory (default: <checkpoint dir>/<stem>_eval_<split>)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward (per rank)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast dtype; fp16 needs CUDA")
    p.add_argument("--num-examples", type=int, default=4, help="rows in examples.png (0 = none)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    add_threads_arg(p)
    ns = p.parse_args(args)
    if ns.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if ns.workers < 0 or ns.num_examples < 0 or ns.threads < 0:
        p.error("--workers, --num-examples and --threads must be >= 0")
    if ns.split is None:
        if ns.format != "folder":
            p.error(f"--format {ns.format} needs --split SPLIT_FILE (e.g. splits/test.txt)")
        ns.split = "test"
    return ns


def _out_dir(ns: argparse.Namespace) -> Path:
    if ns.out:
        return Path(ns.out)
    return Path(ns.checkpoint).with_name(f"{Path(ns.checkpoint).stem}_eval_{Path(ns.split).stem}")


def run(ns: argparse.Namespace, env: dist_utils.DistInfo) -> dict[str, Any]:
    """Evaluate as ``ns`` says; returns the results (same on every rank); raises on bad input."""
    from m3l_core.inference import PRECISIONS as DTYPES
    from m3l_core.report import format_table, write_report

    if ns.precision == "fp16" and env.device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    ckpt = load_checkpoint(ns.checkpoint, device="cpu")
    spec = DatasetSpec(root=ns.data, format=ns.format, semantic_labels=ns.semantic_labels,
                       depth_bitshift=not ns.no_depth_bitshift)
    dataset = open_dataset(spec, ns.split, labeled=True)
    listing = split_path(spec, ns.split)
    if len(dataset) == 0:
        raise DatasetError(f"{listing}: lists no samples")
    source = str(Path(ns.data) / "classes.yaml") if ns.format == "folder" else f"{ns.format} dataset {ns.data}"
    check_classes(ckpt.class_names, dataset, checkpoint=ns.checkpoint, source=source)
    check_dataset(dataset, ns.check, what=str(listing))  # every rank: cheap, and no rank waits on another
    h, w = ckpt.preprocessing.input_size
    if env.is_main:
        print(f"model input size: {h}x{w} (HxW, from the checkpoint's preprocessing)", flush=True)
    log.info("evaluating %s on %s: %d samples, %d rank(s), %s model, input %dx%d", ns.checkpoint, listing,
             len(dataset), env.world_size, "+".join(ckpt.model_config.modalities), h, w)
    ev = evaluate_dataset(ckpt, dataset, device=env.device, batch_size=ns.batch_size, workers=ns.workers,
                          amp_dtype=DTYPES[ns.precision] if ns.precision != "fp32" else None,
                          num_examples=ns.num_examples, progress=True)
    if env.is_main:
        info = {
            "checkpoint": str(ns.checkpoint), "data": str(ns.data), "format": ns.format, "split": ns.split,
            "num_samples": len(dataset), "world_size": env.world_size, "precision": ns.precision,
            "backbone": ckpt.model_config.backbone, "modalities": list(ckpt.model_config.modalities),
            "missing_token": ckpt.model_config.missing_token, "input_size": [h, w],
            "class_names": list(ckpt.class_names),
            "confusion_matrices": {c: cm.tolist() for c, cm in ev.cms.items()},
        }
        paths = write_report(_out_dir(ns), ev.results, info=info, examples=ev.examples, palette=ckpt.palette,
                             class_names=ckpt.class_names, ignore_index=dataset.classes.ignore_index)
        print(format_table(ev.results))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    dist_utils.barrier()
    return ev.results


def main(args: Sequence[str] | None = None) -> int:
    ns = parse_args(args)
    try:
        env = dist_utils.init_from_env(ns.device)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    setup_logging(is_main=env.is_main, fmt="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        setup_threads(ns.threads)
        run(ns, env)
        return EXIT_OK

    return run_guarded(body, failure=(CheckpointError, DatasetError, ValueError, OSError))

if __name__ == "__main__":
    sys.exit(main())
