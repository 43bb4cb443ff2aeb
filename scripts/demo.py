#!/usr/bin/env python3
"""``make demo``: a synthetic RGB-D bag replayed through ``segment_node`` while first depth, then RGB dies.

    python scripts/demo.py [--checkpoint PATH] [--out demo_out] [--device auto]
        [--depth-drop 4:8] [--rgb-drop 10:14] [--frames 180 --fps 10 --height 240 --width 320]

Steps, each a separate process with its log in ``OUT/logs/``:

1. ``python -m m3l_ros.record`` writes a synthetic camera trajectory with ground truth
   to ``OUT/bag`` (MCAP, RealSense topic names; recreated on every run).
2. ``python -m m3l_ros.segment_node`` starts with the bundled demo model
   (``m3l_ros/models/demo.safetensors``) or ``--checkpoint``, remapped to the bag's topics.
3. ``python -m m3l_ros.replay_eval --out OUT/report`` listens to the node and the ground truth.
4. ``python -m m3l_ros.replay OUT/bag --drop DEPTH@4:8 --drop RGB@10:14`` plays the bag and
   withholds depth, then RGB, the way a camera stream dies (nothing arrives).

This script prints the node's mode changes as they happen, then the evaluator's summary
(mIoU per mode, mode-switch latency after each dropout boundary, end-to-end latency,
frames in and out), stops the node with SIGINT and checks it exits 0. It exits 1 if a
step fails (with the tail of that step's log) or if the node did not switch modes and
keep publishing labels through both dropouts; 130 on Ctrl-C.

Everything runs on a private ROS domain (``ROS_DOMAIN_ID`` random in 1..101 unless set)
with localhost-only discovery. Only the processes started here are ever signalled.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

try:
    from m3l_ros.procs import Child, ChildError, GraphProbe, domain_id_from_env, latched_qos, python_child, ros_env
except ImportError as _err:  # pragma: no cover - a clear message instead of a traceback
    sys.exit(f"demo: the m3l_ros package is not importable by {sys.executable} ({_err}); run `make demo` "
             "(or `pip install --no-deps .` in your venv) first")

RGB_TOPIC = "/camera/camera/color/image_raw"
DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "/camera/camera/color/camera_info"
GT_TOPIC = "/camera/camera/ground_truth/labels"
NODE = "/segment_node"  # the node's default name; its outputs are NODE/labels, NODE/mode, ...
EVENTS_TOPIC = "/m3l_replay/events"


@dataclass
class DemoConfig:
    out: Path = Path("demo_out")
    checkpoint: Path | None = None  # None: the bundled demo model
    device: str = "auto"
    frames: int = 180  # 18 s at 10 fps: room for two 4 s dropouts with recovery in between
    fps: float = 10.0
    height: int = 240
    width: int = 320
    seed: int = 0
    storage: str = "mcap"
    depth_drop: tuple[float, float] = (4.0, 8.0)  # seconds from the bag's start
    rgb_drop: tuple[float, float] = (10.0, 14.0)
    stream_timeout: float = 0.4  # node rgb/depth_timeout: 4 frame periods at 10 fps
    startup_timeout: float = 180.0  # node start (torch import + model load) on a busy 2-core machine


class StepError(ChildError):
    """A demo step failed; the message says which and shows its log."""


class Stop(Exception):
    """SIGTERM (SIGINT arrives as KeyboardInterrupt)."""


def bundled_checkpoint() -> Path:
    """``m3l_ros/models/demo.safetensors`` of the m3l_ros this Python imports (the installed one under make)."""
    spec = importlib.util.find_spec("m3l_ros")
    if spec is None or spec.origin is None:
        raise StepError("the m3l_ros package is not importable by this Python; run `make demo` "
                        "(or `pip install --no-deps .` in your venv) first")
    return Path(spec.origin).resolve().parent / "models" / "demo.safetensors"


# -- live monitor -----------------------------------------------------------------------------
class Monitor(GraphProbe):
    """An rclpy node in this process: waits for the graph and prints mode changes and replay events live."""

    def __init__(self, domain_id: int, say: Callable[[str], None]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String

        super().__init__(domain_id, "m3l_demo_monitor")
        self.say = say
        self.mode: str | None = None
        self.t_start: float | None = None  # wall time of the replay's "start" event
        self.finished = False
        self.diagnostics: dict[str, str] = {}
        self.subscribe("mode", String, f"{NODE}/mode", latched_qos(50), callback=self._on_mode)
        self.subscribe("events", String, EVENTS_TOPIC, latched_qos(50), callback=self._on_event)
        self.class_names = self.subscribe("class_names", String, f"{NODE}/class_names", latched_qos())
        self.subscribe("diagnostics", DiagnosticArray, "/diagnostics", 10, callback=self._on_diagnostics)

    def _t(self) -> str:
        return "      " if self.t_start is None else f"{time.time() - self.t_start:5.1f}s"

    def _on_mode(self, msg) -> None:
        if msg.data != self.mode:
            if self.mode is not None:
                self.say(f"  {self._t()}  node mode -> {msg.data}")
            self.mode = msg.data

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            if st.name.startswith(NODE):
                self.diagnostics = {kv.key: kv.value for kv in st.values}

    def _on_event(self, msg) -> None:
        try:
            e = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        kind = e.get("event")
        if kind == "start":
            self.t_start = float(e.get("wall_time", time.time()))
            self.say(f"  {self._t()}  replay started ({e.get('duration_s', 0):.1f} s of bag)")
        elif kind in ("drop_start", "drop_end"):
            what = "withheld" if kind == "drop_start" else "back"
            self.say(f"  {self._t()}  replay: {e.get('published_topic', e.get('topic'))} {what}")
        elif kind == "finished":
            self.finished = True
            self.say(f"  {self._t()}  replay finished")

    def count_subscribers(self, topic: str) -> int:
        return self.node.count_subscribers(topic)

    def wait(self, pred: Callable[[], bool], timeout: float, children: list[Child], what: str) -> None:
        """Spin until ``pred()``; a child exiting early or the timeout is a StepError naming ``what``."""
        if not self.spin_until(pred, timeout, children=children, what=what):
            raise StepError(f"timed out after {timeout:.0f} s waiting for {what}; logs: "
                            + ", ".join(str(c.log_path) for c in children))


# -- the demo ---------------------------------------------------------------------------------
def run(cfg: DemoConfig, children: list[Child], say: Callable[[str], None]) -> int:
    t0 = time.monotonic()
    ckpt = cfg.checkpoint if cfg.checkpoint is not None else bundled_checkpoint()
    if not ckpt.is_file():
        if cfg.checkpoint is None:
            raise StepError(f"the bundled demo model is missing: {ckpt}\n  It is part of the repository "
                            "(m3l_ros/models/demo.safetensors) and installed with the package; `make demo` "
                            "reinstalls when it changed. Or pass --checkpoint PATH to a checkpoint of your own.")
        raise StepError(f"--checkpoint {ckpt}: file not found")
    try:
        domain_id = domain_id_from_env()
    except ValueError as err:
        raise StepError(str(err)) from None
    out = cfg.out.resolve()
    bag, report_dir, log_dir = out / "bag", out / "report", out / "logs"
    for d in (bag, report_dir, log_dir):
        if d.exists():
            shutil.rmtree(d)
    log_dir.mkdir(parents=True)
    os.environ.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env = ros_env(domain_id)
    say(f"M3L-ROS demo: model {ckpt}, ROS_DOMAIN_ID={domain_id} (localhost only), output in {out}")

    # 1. The bag.
    say(f"[1/5] writing a synthetic RGB-D bag: {cfg.frames} frames at {cfg.fps:g} fps, "
        f"{cfg.width}x{cfg.height}, {cfg.storage} -> {bag}")
    rec = python_child("m3l_ros.record", "--out", str(bag), "--synthetic", "--frames", str(cfg.frames),
                       "--height", str(cfg.height), "--width", str(cfg.width), "--fps", str(cfg.fps),
                       "--seed", str(cfg.seed), "--storage", cfg.storage, "--no-progress",
                       env=env, log_path=log_dir / "record.log", name="record")
    children.append(rec)
    if rec.wait(300) != 0:
        raise rec.fail("writing the bag failed" if rec.proc.returncode is not None else "writing the bag timed out")
    rec.stop()

    # 2. + 3. The node and the evaluator start together (both import torch).
    say("[2/5] starting segment_node and the replay evaluator")
    node_argv = ["--ros-args", "-r", f"rgb/image:={RGB_TOPIC}", "-r", f"depth/image:={DEPTH_TOPIC}",
                 "-r", f"rgb/camera_info:={INFO_TOPIC}",
                 "-p", f"checkpoint:={ckpt}", "-p", f"device:={cfg.device}",
                 "-p", "qos_reliability:=reliable",
                 "-p", f"rgb_timeout:={cfg.stream_timeout}", "-p", f"depth_timeout:={cfg.stream_timeout}"]
    node = python_child("m3l_ros.segment_node", *node_argv, env=env, log_path=log_dir / "segment_node.log",
                        name="segment_node")
    children.append(node)
    duration = cfg.frames / cfg.fps
    ev = python_child("m3l_ros.replay_eval", "--out", str(report_dir),
                      "--duration", str(duration + cfg.startup_timeout + 120), "--grace", "1.5",
                      env=env, log_path=log_dir / "replay_eval.log", name="replay_eval")
    children.append(ev)
    mon = Monitor(domain_id, say)
    try:
        # Ready = the model is loaded (latched ~/class_names) and the inputs are subscribed.
        mon.wait(lambda: mon.count_subscribers(RGB_TOPIC) >= 1 and mon.count_subscribers(DEPTH_TOPIC) >= 1
                 and bool(mon.class_names), cfg.startup_timeout, [node, ev],
                 "segment_node to load the model and subscribe")
        names = json.loads(mon.class_names[-1].msg.data)["class_names"]
        mon.wait(lambda: "device" in mon.diagnostics, 30, [node, ev], "the node's first /diagnostics")
        d = mon.diagnostics
        say(f"        node ready after {time.monotonic() - t0:.0f} s: {len(names)} classes, backend "
            f"{d.get('backend', '(not reported)')}, device {d.get('device', '?')}, precision {d.get('precision', '?')}")
        mon.wait(lambda: mon.count_subscribers(GT_TOPIC) >= 1 and mon.count_subscribers(f"{NODE}/labels") >= 1,
                       cfg.startup_timeout, [node, ev], "the replay evaluator to subscribe")

        # 4. The replay with two dropout windows.
        (d0, d1), (r0, r1) = cfg.depth_drop, cfg.rgb_drop
        say(f"[3/5] replaying {duration:.0f} s: depth withheld {d0:g}-{d1:g} s, RGB withheld {r0:g}-{r1:g} s")
        rp = python_child("m3l_ros.replay", str(bag), "--qos", "reliable",
                          "--drop", f"{DEPTH_TOPIC}@{d0}:{d1}", "--drop", f"{RGB_TOPIC}@{r0}:{r1}",
                          "--wait-for-subscribers", "60", "--wait-topics", RGB_TOPIC, DEPTH_TOPIC, GT_TOPIC,
                          env=env, log_path=log_dir / "replay.log", name="replay")
        children.append(rp)
        mon.wait(lambda: not rp.alive(), duration + 120, [node, ev], "the replay to finish")
        if rp.proc.returncode != 0:
            raise rp.fail(f"the replay exited with code {rp.proc.returncode}")
        mon.wait(lambda: not ev.alive(), 120, [node], "the evaluator to write its report")
    finally:
        mon.close()
    if ev.wait(0) != 0:
        raise ev.fail(f"the replay evaluator exited with code {ev.proc.returncode}")

    # 5. Summary, then stop the node.
    report_json = report_dir / "replay_report.json"
    if not report_json.is_file():
        raise ev.fail(f"the evaluator wrote no {report_json}")
    report = json.loads(report_json.read_text())
    from m3l_ros.replay_eval import format_summary

    say("[4/5] evaluator summary\n")
    say(format_summary(report))
    say(f"\n(switch latency: time from a dropout boundary to the node's ~/mode change. On loss it is about "
        f"the stream timeout ({cfg.stream_timeout:g} s) minus one frame period; on recovery the first frame of "
        f"the returning stream switches back, within milliseconds.)\n")
    say("[5/5] stopping segment_node (SIGINT)")
    rc = node.stop(timeout=30)
    if rc != 0:
        raise node.fail("segment_node did not exit cleanly on SIGINT "
                        f"({'killed after 30 s' if rc is None else f'exit code {rc}'})")
    say("        segment_node exited with code 0")

    problems = check(report)
    say("")
    say(f"report: {report_dir / 'replay_report.md'}")
    say(f"        {report_dir / 'replay_timeline.png'}")
    say(f"        {report_json}")
    say(f"logs:   {log_dir}")
    say(f"demo finished in {time.monotonic() - t0:.0f} s")
    if problems:
        say("\nDEMO CHECK FAILED:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    say("OK: the node switched to the learned-token path for each lost stream, kept publishing labels, "
        "and recovered to RGB-D.")
    return 0


def check(report: dict) -> list[str]:
    """What the demo must show: every expected switch happened, and labels kept coming in each degraded mode."""
    problems = []
    for s in report["switches"]:
        if s["switch_expected"] and not s["truncated"] and not s["reached"]:
            problems.append(f"after {s['event']} of {s['topic']} the node never reported mode {s['expected_mode']}")
    expected = {s["expected_mode"] for s in report["switches"] if s["switch_expected"] and not s["truncated"]}
    for mode in sorted(expected):
        n = report["per_mode"].get(mode, {}).get("frames", 0)
        if n == 0:
            problems.append(f"no label images were published in mode {mode}")
    if not report["frames"]["labels_out"]:
        problems.append("the node published no label images at all")
    return problems


def _window(spec: str) -> tuple[float, float]:
    a, sep, b = spec.partition(":")
    try:
        lo, hi = float(a), float(b)
    except ValueError:
        lo = hi = -1.0
    if not sep or not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds with 0 <= START < END, got {spec!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="model checkpoint (.safetensors); default: the bundled m3l_ros/models/demo.safetensors")
    p.add_argument("--out", type=Path, default=d.out, help=f"output directory (default {d.out})")
    p.add_argument("--device", default=d.device, help="node device: auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--frames", type=int, default=d.frames, help=f"bag frames (default {d.frames})")
    p.add_argument("--fps", type=float, default=d.fps, help=f"bag frame rate (default {d.fps:g})")
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--seed", type=int, default=d.seed, help="synthetic scene seed")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default=d.storage)
    p.add_argument("--depth-drop", type=_window, default=d.depth_drop, metavar="START:END",
                   help="depth dropout window, seconds from the bag's start (default 4:8)")
    p.add_argument("--rgb-drop", type=_window, default=d.rgb_drop, metavar="START:END",
                   help="RGB dropout window (default 10:14)")
    p.add_argument("--timeout", type=float, default=d.stream_timeout,
                   help=f"node rgb_timeout and depth_timeout in s (default {d.stream_timeout})")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.frames <= 0 or ns.fps <= 0 or ns.height <= 0 or ns.width <= 0:
        build_parser().error("--frames, --fps, --height and --width must be > 0")
    cfg = DemoConfig(out=ns.out, checkpoint=ns.checkpoint, device=ns.device, frames=ns.frames, fps=ns.fps,
                     height=ns.height, width=ns.width, seed=ns.seed, storage=ns.storage, depth_drop=ns.depth_drop,
                     rgb_drop=ns.rgb_drop, stream_timeout=ns.timeout)

    def on_term(*_):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`cmd &`)
    children: list[Child] = []
    say = lambda s: print(s, flush=True)  # noqa: E731
    try:
        return run(cfg, children, say)
    except ChildError as err:  # a step failed (StepError) or a child exited early
        print(f"\ndemo failed: {err}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Stop):
        print("\ndemo interrupted; stopping its processes", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        for c in reversed(children):
            if c.alive():
                c.stop(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
