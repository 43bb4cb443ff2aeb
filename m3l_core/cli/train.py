"""Train Linear Fusion with M3L or one of its baselines (supervised, modality dropout, mean teacher, CPS-Seg).

    m3l-train --config config/train/synthetic_m3l.yaml --data data/synthetic --out runs/m3l
    m3l-train --config config/train/stanford_m3l_0.1.yaml --data /data/stanford \\
        --out runs/stanford_m3l_0.1 --pretrained weights/mit_b2.pth --set data.num_workers=8
    torchrun --nproc_per_node=4 training/train_m3l.py --config ... --data ... --out ...   # DDP, batch sizes per GPU
    m3l-train --resume runs/m3l                                                      # continue after a stop

(``python training/train_m3l.py`` is the same command.) The run directory gets
``model.safetensors`` (best on validation, loadable by ``m3l_core.inference.Segmenter``),
``last.safetensors`` (final weights), ``state/`` (resumable: student, teacher, optimizer, step;
for ``framework: cps`` both networks, of which the first is the exported model),
``config.yaml`` (the resolved config), ``metrics.jsonl`` and ``train.log``. Every listed frame is
checked before step 1 (``data.check``). Ctrl-C (or SIGTERM) stops after the current step with the
state saved; ``--resume`` continues. Exit codes: 0 done (or --stop-after reached), 1 runtime
failure (bad data, a non-finite loss: state saved), 2 usage error (bad arguments or config),
130 stopped by Ctrl-C/SIGTERM (state saved).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from m3l_core.checkpoint import CheckpointError
from m3l_core.cli.common import EXIT_INTERRUPTED, EXIT_OK, add_threads_arg, run_guarded, setup_logging, setup_threads
from m3l_core.data.folder import DatasetError
from m3l_core.train.config import ConfigError, TrainConfig, load_config
from m3l_core.train.trainer import NonFiniteLossError, TrainResult, train

log = logging.getLogger("m3l_core.cli.train")


def parse_args(args: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="m3l-train", description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1])
    p.add_argument("--config", type=Path, help="config/train/NAME.yaml (not with --resume: the run's config.yaml is used)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run saved in RUN")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set data.crop_size=[480,480]")
    p.add_argument("--pretrained", help="ImageNet MiT weights file (sets model.pretrained)")
    p.add_argument("--init", help="M3L-ROS checkpoint to start from (sets model.init; see model.init_reset)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps of this invocation (resumable)")
    add_threads_arg(p)
    ns = p.parse_args(args)
    if ns.resume is None and (ns.config is None or ns.out is None):
        p.error("--config and --out are required (or --resume RUN)")
    if ns.resume is not None:
        if ns.config is not None:
            p.error("--resume uses RUN/config.yaml; do not pass --config (use --set to change a value)")
        if ns.out is not None and ns.out.resolve() != ns.resume.resolve():
            p.error("--out must be the same directory as --resume")
        ns.out = ns.resume
    if ns.stop_after is not None and ns.stop_after < 1:
        p.error("--stop-after must be >= 1")
    if ns.threads < 0:
        p.error("--threads must be >= 0 (0 = auto)")
    return ns


def read_config(ns: argparse.Namespace) -> TrainConfig:
    """The run's config: ``--config`` (or the run's ``config.yaml`` on resume), CLI flags, then ``--set``."""
    extra: dict = {}
    if ns.data is not None:
        extra.setdefault("data", {})["root"] = str(Path(ns.data).resolve())  # absolute: resumable from anywhere
    for flag, key in (("pretrained", "pretrained"), ("init", "init")):
        if getattr(ns, flag) is not None:
            extra.setdefault("model", {})[key] = str(Path(getattr(ns, flag)).resolve())
    if ns.resume is None:
        return load_config(ns.config, ns.overrides, extra=extra)
    path = ns.resume / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {ns.resume} a run directory?")
    if ns.overrides:
        log.warning("--set on resume changes the run: %s", ", ".join(ns.overrides))
    return load_config(path, ns.overrides, extra=extra)


def _report(result: TrainResult, out: Path) -> None:
    best = "n/a" if result.best_value is None else f"{result.best_value:.2f} at step {result.best_step}"
    if result.finished:
        print(f"finished {result.step} steps; best val {result.best_metric} mIoU {best} "
              f"-> {out / 'model.safetensors'}")
    else:
        print(f"stopped at step {result.step} (best val {result.best_metric} mIoU {best}); "
              f"continue with: m3l-train --resume {out}")


def main(args: Sequence[str] | None = None) -> int:
    ns = parse_args(args)
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; the group starts inside train()
    setup_logging(is_main=is_main)

    def body() -> int:
        handler: logging.Handler | None = None
        try:
            setup_threads(ns.threads)
            cfg = read_config(ns)
            if is_main:
                ns.out.mkdir(parents=True, exist_ok=True)
                handler = logging.FileHandler(ns.out / "train.log")  # appends on --resume
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                logging.getLogger().addHandler(handler)
            result = train(cfg, ns.out, resume=ns.resume is not None, device=ns.device, stop_after=ns.stop_after)
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
        if is_main:
            _report(result, ns.out)
        return EXIT_INTERRUPTED if result.interrupted else EXIT_OK

    # Usage: the arguments point at the wrong thing. Failure: the data, a checkpoint or a step.
    return run_guarded(body, usage=(ConfigError, FileExistsError, FileNotFoundError),
                       failure=(DatasetError, CheckpointError, NonFiniteLossError, ValueError, OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
