"""Train Linear Fusion with M3L or one of its baselines (supervised, modality dropout, mean teacher).

    python training/train_m3l.py --config config/train/synthetic_m3l.yaml --data data/synthetic --out runs/m3l
    python training/train_m3l.py --config config/train/stanford_m3l_0.1.yaml --data /data/stanford \\
        --out runs/stanford_m3l_0.1 --pretrained weights/mit_b2.pth --set data.num_workers=8
    torchrun --nproc_per_node=4 training/train_m3l.py --config ... --data ... --out ...   # DDP, batch sizes per GPU
    python training/train_m3l.py --resume runs/m3l                                      # continue after a stop

The run directory gets ``model.safetensors`` (best on validation, loadable by
``m3l_core.inference.Segmenter``), ``last.safetensors`` (final weights),
``state/`` (resumable: student, teacher, optimizer, step), ``config.yaml`` (the
resolved config), ``metrics.jsonl`` and ``train.log``. Ctrl-C (or SIGTERM)
stops after the current step with the state saved; ``--resume`` continues.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from m3l_core import distributed as dist_utils
from m3l_core.checkpoint import CheckpointError
from m3l_core.data.folder import DatasetError
from m3l_core.train.config import ConfigError, load_config
from m3l_core.train.trainer import train

log = logging.getLogger("train_m3l")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_m3l.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", type=Path, help="config/train/NAME.yaml (not with --resume: the run's config.yaml is used)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run saved in RUN")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set data.crop_size=[480,480]")
    p.add_argument("--pretrained", help="ImageNet MiT weights file (sets model.pretrained)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps of this invocation (resumable)")
    args = p.parse_args(argv)
    if args.resume is None and (args.config is None or args.out is None):
        p.error("--config and --out are required (or --resume RUN)")
    if args.resume is not None:
        if args.config is not None:
            p.error("--resume uses RUN/config.yaml; do not pass --config (use --set to change a value)")
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            p.error("--out must be the same directory as --resume")
        args.out = args.resume
    if args.stop_after is not None and args.stop_after < 1:
        p.error("--stop-after must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; the group starts inside train()
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when something configured logging before us
    handler: logging.Handler | None = None
    extra: dict = {}
    if args.data is not None:
        extra.setdefault("data", {})["root"] = str(Path(args.data).resolve())  # absolute: resumable from anywhere
    if args.pretrained is not None:
        extra.setdefault("model", {})["pretrained"] = str(Path(args.pretrained).resolve())
    try:
        if args.resume is not None:
            path = args.resume / "config.yaml"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; is {args.resume} a run directory?")
            if args.overrides:
                log.warning("--set on resume changes the run: %s", ", ".join(args.overrides))
            cfg = load_config(path, args.overrides, extra=extra)
        else:
            cfg = load_config(args.config, args.overrides, extra=extra)
        if is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(args.out / "train.log")  # appends on --resume
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
        result = train(cfg, args.out, resume=args.resume is not None, device=args.device,
                       stop_after=args.stop_after)
    except (ConfigError, DatasetError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        log.debug("training failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist_utils.cleanup()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    if is_main:
        best = "n/a" if result.best_value is None else f"{result.best_value:.2f} at step {result.best_step}"
        if result.finished:
            print(f"finished {result.step} steps; best val {result.best_metric} mIoU {best} "
                  f"-> {args.out / 'model.safetensors'}")
        else:
            print(f"stopped at step {result.step} (best val {result.best_metric} mIoU {best}); "
                  f"continue with: python training/train_m3l.py --resume {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
