"""Replay a rosbag2 bag with rclpy, with sensor-dropout injection.

    python -m m3l_ros.replay BAG [--rate R] [--loop] [--clock] [--topics T ...]
        [--remap FROM:=TO ...] [--drop TOPIC@START:END ...] [--restamp]
        [--start-delay S] [--wait-for-subscribers S [--wait-topics T[=N] ...]]
        [--qos reliable|best_effort]

Like ``ros2 bag play`` (which it does not need): one publisher per topic, the
raw CDR bytes from the bag are published unchanged, paced by the bag's log
times scaled by ``--rate``. What ``ros2 bag play`` cannot do is ``--drop``:
``--drop /camera/camera/aligned_depth_to_color/image_raw@2:4`` withholds that
topic from 2 s to 4 s after the bag's start, the way a real camera stream dies
(nothing arrives, no error message). Windows are half-open ``[START, END)``,
repeatable, an empty END means "until the end", and the topic may be named by
its bag name or its remapped name.

The replay announces what it does on ``/m3l_replay/events`` (std_msgs/String,
JSON, reliable + transient-local so late subscribers get the history):
``start``, ``drop_start``/``drop_end`` when playback reaches a window
boundary, ``loop``, and ``finished`` with per-topic counts. ``wall_time`` in
each event is the publisher's ``time.time()``. ``python -m m3l_ros.replay_eval``
uses these to measure mode-switch latency.

``--restamp`` rewrites header stamps to the wall time each message is due
(stamps equal in the bag stay equal, so RGB, depth and ground truth of a frame
still match). Use it for nodes that judge staleness by stamp age, or when
looping. ``--clock`` publishes ``/clock`` for nodes with ``use_sim_time``.

Exit code 0 at the end of the bag and on SIGINT/SIGTERM; 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from m3l_ros.bag_io import BagInfo, bag_info, cdr_header_stamp, iter_raw, msgtype_has_leading_header, restamp_cdr
from m3l_ros.dropout import Boundary, DropoutTracker, DropWindow, PlaybackScheduler, parse_drop, shift_stamp

log = logging.getLogger("m3l_ros.replay")

NODE_NAME = "m3l_replay"
EVENTS_TOPIC = f"/{NODE_NAME}/events"  # the node's private ~/events
QOS_CHOICES = ("reliable", "best_effort")


@dataclass
class ReplayConfig:
    """What to play and how."""

    bag: Path
    rate: float = 1.0  # playback speed factor; 2.0 plays twice as fast
    loop: bool = False
    clock: bool = False  # publish /clock (bag time) for nodes with use_sim_time
    clock_hz: float = 40.0  # /clock publish frequency while waiting, as ros2 bag play's default
    topics: list[str] | None = None  # bag topics to play; None = all
    remap: dict[str, str] = field(default_factory=dict)  # bag topic -> published topic
    drops: list[DropWindow] = field(default_factory=list)
    restamp: bool = False
    start_delay: float = 0.0  # seconds to wait after creating publishers (DDS discovery)
    wait_for_subscribers: float = 0.0  # wait up to this long for the wait_topics to have a subscriber
    wait_topics: list[str] | None = None  # "TOPIC" or "TOPIC=N" (bag or published name); None = every played topic
    qos: str = "reliable"  # RealSense publishes reliable; counting tests need reliable end to end
    qos_depth: int = 10
    linger: float = 0.5  # keep the node alive after "finished" so reliable deliveries complete

    def __post_init__(self) -> None:
        self.bag = Path(self.bag)
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"--rate must be > 0, got {self.rate}")
        if not self.clock_hz > 0:
            raise ValueError(f"--clock-hz must be > 0, got {self.clock_hz}")
        if self.qos not in QOS_CHOICES:
            raise ValueError(f"--qos must be one of {QOS_CHOICES}, got {self.qos!r}")
        for name in ("start_delay", "wait_for_subscribers", "linger"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def parse_remap(spec: str) -> tuple[str, str]:
    """``FROM:=TO`` -> (FROM, TO)."""
    src, sep, dst = spec.partition(":=")
    if not sep or not src.strip() or not dst.strip():
        raise ValueError(f"bad --remap {spec!r}: expected FROM:=TO, e.g. /camera/camera/color/image_raw:=/rgb/image")
    return src.strip(), dst.strip()


def parse_wait_topic(spec: str) -> tuple[str, int]:
    """``TOPIC`` or ``TOPIC=N`` -> (topic, minimum subscriber count)."""
    topic, sep, n = spec.partition("=")
    try:
        count = int(n) if sep else 1
    except ValueError:
        count = 0
    if not topic or count < 1:
        raise ValueError(f"bad --wait-topics entry {spec!r}: expected TOPIC or TOPIC=N with N >= 1")
    return topic, count


def _resolve(name: str, out: dict[str, str], what: str) -> str:
    """A bag topic from its bag name or its published (remapped) name."""
    if name in out:
        return name
    back = {v: k for k, v in out.items()}
    if name in back:
        return back[name]
    raise ValueError(f"{what}: topic {name!r} is not played; played topics: {sorted(out)}")


def plan_topics(info: BagInfo, config: ReplayConfig) -> tuple[dict[str, str], list[DropWindow]]:
    """Validate names against the bag: (bag topic -> published topic, drop windows on bag topics)."""
    have = set(info.topics)
    selected = list(info.topics) if config.topics is None else list(config.topics)
    for t in selected:
        if t not in have:
            raise ValueError(f"--topics: {t!r} is not in bag {info.path}; it has {sorted(have)}")
    for src in config.remap:
        if src not in have:
            raise ValueError(f"--remap: {src!r} is not in bag {info.path}; it has {sorted(have)}")
    out = {t: config.remap.get(t, t) for t in selected}
    for t in config.wait_topics or []:
        _resolve(parse_wait_topic(t)[0], out, "--wait-topics")
    drops = []
    for w in config.drops:
        topic = _resolve(w.topic, out, f"--drop {w.spec()}")
        drops.append(DropWindow(topic=topic, start_s=w.start_s, end_s=w.end_s))
        if w.start_s > info.duration_s:
            log.warning("--drop %s starts after the bag ends (%.2f s); it never takes effect",
                        w.spec(), info.duration_s)
    return out, drops


def _msg_class(msgtype: str, topic: str):
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise ValueError(
            f"topic {topic!r}: message type {msgtype!r} is not installed (python package {pkg!r})") from None


@dataclass
class ReplaySummary:
    published: dict[str, int]
    suppressed: dict[str, int]
    iterations: int
    interrupted: bool
    wall_s: float


class BagReplayer:
    """Publishes a bag through an rclpy node. Timing and dropout decisions come from :mod:`m3l_ros.dropout`.

    ``clock`` (monotonic seconds) and ``stop`` are injected; ``stop.set()`` ends playback
    at the next message or within one ``/clock`` period.
    """

    def __init__(
        self,
        node: Any,
        config: ReplayConfig,
        *,
        info: BagInfo | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from std_msgs.msg import String

        from m3l_ros.procs import latched_qos

        self.node = node
        self.config = config
        self.info = info or bag_info(config.bag)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.wall_ns = wall_ns
        self.out_topics, drops = plan_topics(self.info, config)
        self.tracker = DropoutTracker(drops)
        self.scheduler = PlaybackScheduler(rate=config.rate)
        # An int is rclpy's default profile: RELIABLE, VOLATILE, KEEP_LAST(depth), as the RealSense
        # driver publishes; Fast DDS delivers that at camera resolution without any profile variable.
        qos = config.qos_depth if config.qos == "reliable" else qos_profile_sensor_data
        self.publishers: dict[str, Any] = {}
        self.restampable: dict[str, bool] = {}
        for topic in self.out_topics:
            msgtype = self.info.topics[topic].msgtype
            self.publishers[topic] = node.create_publisher(_msg_class(msgtype, topic), self.out_topics[topic], qos)
            self.restampable[topic] = msgtype_has_leading_header(msgtype)
        self._string = String
        self.events = node.create_publisher(String, "~/events", latched_qos(100))
        self.clock_pub = None
        if config.clock:
            from rosgraph_msgs.msg import Clock

            self._clock_msg = Clock
            # Reliable serves both reliable and best-effort /clock subscribers.
            self.clock_pub = node.create_publisher(Clock, "/clock", 1)
        self._last_clock = -math.inf
        self.published = {t: 0 for t in self.out_topics}
        self.suppressed = {t: 0 for t in self.out_topics}

    # -- helpers -------------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        payload = {"event": event, "wall_time": self.wall_ns() * 1e-9, **fields}
        self.events.publish(self._string(data=json.dumps(payload)))
        log.info("event %s", json.dumps(payload))

    def _publish_clock(self, now: float, force: bool = False) -> None:
        if self.clock_pub is None or (not force and now - self._last_clock < 1.0 / self.config.clock_hz):
            return
        from builtin_interfaces.msg import Time

        ns = self.scheduler.bag_time_ns(now)
        self.clock_pub.publish(self._clock_msg(clock=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)))
        self._last_clock = now

    def _sleep_until(self, deadline: float) -> bool:
        """Wait for ``deadline`` (publishing /clock meanwhile); False if stopped."""
        period = 1.0 / self.config.clock_hz
        while not self.stop.is_set():
            now = self.clock()
            self._publish_clock(now)
            remaining = deadline - now
            if remaining <= 0:
                return True
            self.stop.wait(min(remaining, period) if self.clock_pub is not None else remaining)
        return False

    def _announce(self, b: Boundary, iteration: int) -> None:
        self.emit(b.kind, topic=b.window.topic, published_topic=self.out_topics[b.window.topic],
                  window=b.window.to_dict(), bag_time=b.time_s, truncated=b.truncated, iteration=iteration)

    def wait_for_subscribers(self) -> None:
        deadline = self.clock() + self.config.wait_for_subscribers
        specs = [parse_wait_topic(t) for t in self.config.wait_topics] if self.config.wait_topics else [
            (t, 1) for t in self.out_topics]
        wanted = [(_resolve(t, self.out_topics, "--wait-topics"), n) for t, n in specs]
        while not self.stop.is_set():
            missing = [self.out_topics[t] for t, n in wanted if self.publishers[t].get_subscription_count() < n]
            if not missing:
                self.stop.wait(0.25)  # let the reverse direction of discovery settle too
                return
            if self.clock() >= deadline:
                log.warning("not enough subscribers after %.1f s on: %s (playing anyway)",
                            self.config.wait_for_subscribers, missing)
                return
            self.stop.wait(0.05)

    # -- playback ------------------------------------------------------------------------------
    def run(self) -> ReplaySummary:
        t_begin = self.clock()
        if self.config.wait_for_subscribers > 0:
            self.wait_for_subscribers()
        if self.config.start_delay > 0:
            self.stop.wait(self.config.start_delay)
        start_ns = self.info.start_ns
        self.emit("start", bag=str(self.config.bag), rate=self.config.rate, loop=self.config.loop,
                  topics=self.out_topics, drops=[w.to_dict() for w in self.tracker.windows],
                  bag_start_ns=start_ns, duration_s=self.info.duration_s, restamp=self.config.restamp)
        iteration = 0
        while not self.stop.is_set():
            if iteration > 0:
                self.emit("loop", iteration=iteration)
            self.tracker.reset()
            self.scheduler.start(self.clock(), start_ns)
            epoch0 = self.wall_ns()
            self._publish_clock(self.clock(), force=True)
            last_t = 0.0
            count = 0
            for topic, _msgtype, ts_ns, data in iter_raw(self.config.bag, topics=list(self.out_topics)):
                count += 1
                t = (ts_ns - start_ns) * 1e-9
                for b in self.tracker.advance(t):
                    if not self._sleep_until(self.scheduler.deadline(start_ns + int(round(b.time_s * 1e9)))):
                        break
                    self._announce(b, iteration)
                if not self._sleep_until(self.scheduler.deadline(ts_ns)):
                    break
                last_t = t
                if self.tracker.suppressed(topic, t):
                    self.suppressed[topic] += 1
                    continue
                if self.config.restamp and self.restampable[topic]:
                    new = shift_stamp(cdr_header_stamp(data), bag_start_ns=start_ns, new_start_ns=epoch0,
                                      rate=self.config.rate)
                    data = restamp_cdr(data, new)
                self.publishers[topic].publish(data)
                self.published[topic] += 1
            for b in self.tracker.close(last_t):
                self._announce(b, iteration)
            iteration += 1
            if not self.config.loop or count == 0:
                break
        interrupted = self.stop.is_set()
        summary = ReplaySummary(published=dict(self.published), suppressed=dict(self.suppressed),
                                iterations=iteration, interrupted=interrupted, wall_s=self.clock() - t_begin)
        self.emit("finished", published=summary.published, suppressed=summary.suppressed,
                  iterations=iteration, interrupted=interrupted)
        if self.config.linger > 0:
            time.sleep(self.config.linger)  # not stop.wait: stop may already be set
        return summary


def format_summary(summary: ReplaySummary, out_topics: dict[str, str]) -> str:
    lines = [f"replay {'interrupted' if summary.interrupted else 'finished'} after {summary.wall_s:.2f} s, "
             f"{summary.iterations} iteration(s)", f"{'topic':<56} {'published':>9} {'suppressed':>10}"]
    for topic, out in out_topics.items():
        name = topic if out == topic else f"{topic} -> {out}"
        lines.append(f"{name:<56} {summary.published[topic]:>9} {summary.suppressed[topic]:>10}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m3l_ros.replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 directory (mcap or sqlite3)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument("--loop", action="store_true", help="play the bag again and again until stopped")
    p.add_argument("--clock", action="store_true", help="publish /clock with the bag time (for use_sim_time)")
    p.add_argument("--clock-hz", type=float, default=40.0, help="/clock frequency (default 40)")
    p.add_argument("--topics", nargs="+", metavar="T", help="play only these bag topics")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="publish bag topic FROM as TO (repeatable)")
    p.add_argument("--drop", action="append", default=[], metavar="TOPIC@START:END",
                   help="suppress TOPIC from START to END seconds after the bag's start (repeatable; END may be empty)")
    p.add_argument("--restamp", action="store_true", help="rewrite header stamps to the wall time each message is due")
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait before playing (discovery)")
    p.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until every --wait-topics topic has a subscriber")
    p.add_argument("--wait-topics", nargs="+", metavar="T[=N]",
                   help="topics (bag or published names) to wait for, optionally for N subscribers "
                        "(default: all played topics, 1 each)")
    p.add_argument("--qos", choices=QOS_CHOICES, default="reliable", help="publisher reliability (default reliable)")
    p.add_argument("--linger", type=float, default=0.5, help="seconds to stay up after the end (default 0.5)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def config_from_args(ns: argparse.Namespace) -> ReplayConfig:
    return ReplayConfig(
        bag=ns.bag, rate=ns.rate, loop=ns.loop, clock=ns.clock, clock_hz=ns.clock_hz, topics=ns.topics,
        remap=dict(parse_remap(s) for s in ns.remap), drops=[parse_drop(s) for s in ns.drop],
        restamp=ns.restamp, start_delay=ns.start_delay, wait_for_subscribers=ns.wait_for_subscribers,
        wait_topics=ns.wait_topics,
        qos=ns.qos, linger=ns.linger,
    )


def main(args: list[str] | None = None) -> int:
    from m3l_ros.ros_session import ros_session
    from rclpy.utilities import remove_ros_args

    argv = sys.argv if args is None else [sys.argv[0], *args]
    parser = build_parser()
    ns = parser.parse_args(remove_ros_args(argv)[1:])
    logging.basicConfig(level=logging.WARNING if ns.quiet else logging.INFO, format="[replay] %(message)s")
    try:
        config = config_from_args(ns)
        info = bag_info(config.bag)
        plan_topics(info, config)
    except (ValueError, KeyError, FileNotFoundError) as err:
        parser.error(str(err))

    with ros_session(NODE_NAME, argv) as (node, stop):
        try:
            replayer = BagReplayer(node, config, info=info, stop=stop)
        except ValueError as err:  # e.g. a message type that is not installed
            print(f"error: {err}", file=sys.stderr)
            return 2
        summary = replayer.run()
        print(format_summary(summary, replayer.out_topics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
