"""Write an RGB-D camera bag (rosbag2: MCAP or sqlite3) from synthetic scenes or a folder dataset.

    python -m m3l_ros.record --out BAG --synthetic [--frames 120 --height 480 --width 640 --fps 15 --seed 0]
    python -m m3l_ros.record --out BAG --folder DIR --split test [--fps 15]
        [--camera-info calib.yaml] [--repeat N] [--no-labels] [--max-depth M]

The bag has the RealSense driver's topics unless renamed: ``rgb8`` colour,
``16UC1`` aligned depth in millimetres (invalid = 0, by the project's one depth
rule), ``camera_info`` (from ``--camera-info``, a camera_calibration YAML or a
K/D JSON, else an ideal pinhole with ``--hfov``) and, unless ``--no-labels``,
ground-truth class ids (``mono8``, 255 = ignore). Every frame's messages share
one stamp, ``--start-time + i / fps``; ``--repeat N`` writes the frames N times
over with stamps that keep increasing. ``ros2 bag play`` and
``python -m m3l_ros.replay`` both play it.

Exit codes: 0 written, 1 bad input data (frames, calibration), 2 bad arguments, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from m3l_core.cli.common import run_guarded
from m3l_ros.bag_camera_info import load_calibration
from m3l_ros.bag_io import STORAGES, BagSummary, BagTopics, BagWriterConfig, write_frames

log = logging.getLogger("m3l_ros.record")


def synthetic_frames(*, seed: int, frames: int, height: int, width: int, fps: float | None = None) -> Iterator[dict]:
    """The synthetic camera trajectory (``m3l_core.data.synthetic``) as raw samples.

    ``fps`` sets the trajectory's frame spacing so the camera moves at its physical speed
    in bag time (default: the generator's own ``traj_fps``).
    """
    from m3l_core.data.synthetic import SceneConfig, trajectory

    config = SceneConfig() if fps is None else SceneConfig(traj_fps=fps)
    return trajectory(seed, frames, height, width, config)


def synthetic_defaults() -> tuple[float, float]:
    """(fps, horizontal FOV in degrees) of the synthetic camera, so camera_info matches the rendering."""
    from m3l_core.data.synthetic import SceneConfig

    c = SceneConfig()
    return c.traj_fps, c.hfov_deg


def folder_frames(root: str | Path, split: str, limit: int | None = None, *,
                  labeled: bool | None = None) -> tuple[Iterator[dict], int]:
    """Raw samples of a folder-dataset split in split-file order (lazy), and their count.

    ``labeled=False`` reads no label files (any split); None: the dataset's default.
    """
    from m3l_core.data.folder import FolderDataset

    ds = FolderDataset(root, split, labeled=labeled)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise ValueError(f"{Path(root) / 'splits' / (split + '.txt')}: split {split!r} has no samples")
    return (ds.load(i) for i in range(n)), n


def repeated(make: Callable[[], Iterator[dict]], times: int) -> Iterator[dict]:
    """The frames of ``make()`` ``times`` times over, re-created per pass (constant memory)."""
    for k in range(times):
        for sample in make():
            yield dict(sample, name=f"{sample.get('name', '?')}#{k}") if times > 1 else sample


def build_parser() -> argparse.ArgumentParser:
    d = BagTopics()
    p = argparse.ArgumentParser(prog="python -m m3l_ros.record", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="bag directory to create (must not exist)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="render a synthetic camera trajectory")
    src.add_argument("--folder", type=Path, help="folder dataset root (rgb/, depth/, labels/, splits/)")
    p.add_argument("--split", default="test", help="folder split to record, in file order (default test)")
    p.add_argument("--frames", type=int, default=None,
                   help="number of frames (synthetic: default 120; folder: default all)")
    p.add_argument("--height", type=int, default=480, help="synthetic image height (default 480)")
    p.add_argument("--width", type=int, default=640, help="synthetic image width (default 640)")
    p.add_argument("--seed", type=int, default=0, help="synthetic trajectory seed (default 0)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the stamps (default: the synthetic camera's 15, or 15 for folders)")
    p.add_argument("--start-time", type=float, default=None,
                   help="stamp of the first frame, seconds since the epoch (default: now)")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="rosbag2 storage plugin (default mcap)")
    p.add_argument("--rgb-topic", default=d.rgb)
    p.add_argument("--depth-topic", default=d.depth)
    p.add_argument("--info-topic", default=d.camera_info)
    p.add_argument("--labels-topic", default=d.labels, help="ground-truth labels topic")
    p.add_argument("--no-labels", action="store_true",
                   help="write no ground truth and read no label files (any split)")
    p.add_argument("--repeat", type=int, default=1,
                   help="write the frames N times over, stamps increasing throughout (default 1)")
    p.add_argument("--camera-info", type=Path, default=None,
                   help="camera_calibration / camera_info_manager YAML, or a JSON with K and D "
                        "(optionally width, height, R, P, distortion_model); replaces --hfov")
    p.add_argument("--max-depth", type=float, default=None,
                   help="depth beyond this many metres is written as invalid (0); default: no limit")
    p.add_argument("--frame-id", default="camera_color_optical_frame")
    p.add_argument("--hfov", type=float, default=None,
                   help="horizontal FOV (deg) of the pinhole camera_info without --camera-info (default: the "
                        "synthetic camera's, or 69.4 = RealSense D435 colour for folders)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class UsageError(ValueError):
    """A bad command-line argument (exit code 2)."""


def check_args(ns: argparse.Namespace) -> None:
    if ns.out.exists():
        raise UsageError(f"--out {ns.out} already exists; choose a new bag path")
    if ns.frames is not None and ns.frames <= 0:
        raise UsageError(f"--frames must be > 0, got {ns.frames}")
    if ns.height <= 0 or ns.width <= 0:
        raise UsageError(f"--height/--width must be > 0, got {ns.height}/{ns.width}")
    if ns.repeat < 1:
        raise UsageError(f"--repeat must be >= 1, got {ns.repeat}")
    if ns.camera_info is not None and ns.hfov is not None:
        raise UsageError("--camera-info and --hfov are exclusive (the calibration holds the field of view)")
    if ns.camera_info is not None and not ns.camera_info.is_file():
        raise UsageError(f"--camera-info {ns.camera_info}: file not found")
    if ns.max_depth is not None and not ns.max_depth > 0:
        raise UsageError(f"--max-depth must be > 0 metres, got {ns.max_depth}")
    if ns.fps is not None and not ns.fps > 0:
        raise UsageError(f"--fps must be > 0, got {ns.fps}")


def record(ns: argparse.Namespace) -> BagSummary:
    """Write the bag ``ns`` describes; ``UsageError`` for bad arguments, ``ValueError`` for bad data."""
    check_args(ns)
    start = time.time() if ns.start_time is None else ns.start_time
    fps, hfov = synthetic_defaults() if ns.synthetic else (15.0, 69.4)
    fps = fps if ns.fps is None else ns.fps
    hfov = hfov if ns.hfov is None else ns.hfov
    config = BagWriterConfig(
        storage=ns.storage,
        topics=BagTopics(rgb=ns.rgb_topic, depth=ns.depth_topic, camera_info=ns.info_topic, labels=ns.labels_topic),
        fps=fps,
        start_ns=int(round(start * 1e9)),
        frame_id=ns.frame_id,
        hfov_deg=hfov,
        calibration=None if ns.camera_info is None else load_calibration(ns.camera_info),
        write_labels=not ns.no_labels,
        max_depth=ns.max_depth,
    )
    labeled = False if ns.no_labels else None  # --no-labels: never read label files
    n = (120 if ns.frames is None else ns.frames) if ns.synthetic else \
        folder_frames(ns.folder, ns.split, ns.frames, labeled=labeled)[1]

    def make() -> Iterator[dict]:  # one pass over the frames; --repeat makes several
        if ns.synthetic:
            return synthetic_frames(seed=ns.seed, frames=n, height=ns.height, width=ns.width, fps=fps)
        return folder_frames(ns.folder, ns.split, ns.frames, labeled=labeled)[0]

    return write_frames(ns.out, repeated(make, ns.repeat), config=config, total=n * ns.repeat,
                        progress=not ns.no_progress)


def main(args: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:  # --help (0) or an argparse usage error (2)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="[record] %(message)s")

    def body() -> int:
        summary = record(ns)
        span = (summary.end_ns - summary.start_ns) * 1e-9
        print(f"wrote {summary.frames} frames ({span:.2f} s) to {summary.path} [{summary.storage}]")
        for topic, n in summary.counts.items():
            print(f"  {topic}: {n}")
        return 0

    # UsageError (a ValueError, checked first): 2; bad data (DatasetError, CameraInfoError, frames): 1
    return run_guarded(body, usage=(UsageError,), failure=(ValueError, OSError),
                       interrupted="interrupted; the partial bag was removed")


if __name__ == "__main__":
    sys.exit(main())
