#!/usr/bin/env python3
"""Cameras at 640x480 on Fast DDS's defaults: what the default node receives, and when it notices depth is gone.

    python scripts/node_camera_dropout.py [--seconds 36] [--stop-depth-after 31] [--rate 15] [--load 0]
        [--cases reliable,best_effort,best_effort_profile] [--out-json FILE] [--log-dir DIR]

One ``segment_node`` process with DEFAULT parameters (bundled demo model, ``qos_reliability:
auto``) on a private ROS domain, no Fast DDS profile variable in its environment. For each
case the RealSense-like test camera (test/node_camera.py, 640x480 rgb8 + 16UC1) runs in the
node's session, as under one ``ros2 launch``; its depth stream stops ``--stop-depth-after``
s before the end. Cases: ``reliable`` and ``best_effort`` (no profile anywhere) and
``best_effort_profile`` (config/fastdds_large_images.xml given to the camera's process only).

Measured: frames the camera sent and the node received (its ``received.<m>`` /diagnostics
counters, settled before and after the case), the ``~/mode`` changes from the camera's start
until the node is back in ``no_input``, and the time from the camera's last depth frame
(its header stamp, system clock) to the arrival here of the first switch to ``rgb_only``
(same clock). The node's own log time of that switch is in ``--out-json``.
``--load N`` runs N busy-loop processes, each in a session of its own (other programs on the
machine), for the whole measurement. Child processes and graph probe: m3l_ros.procs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NS = "/m3l_cam"
FQN = f"{NS}/segment_node"
PROFILE = REPO / "config" / "fastdds_large_images.xml"
CASES = {  # name: (camera reliability, profile on the camera's side, table label)
    "reliable": ("reliable", False, "RELIABLE (RealSense default), no profile anywhere"),
    "best_effort": ("best_effort", False, "BEST_EFFORT, no profile anywhere"),
    "best_effort_profile": ("best_effort", True, "BEST_EFFORT, profile on the *camera's* side only"),
}
TIMING = ("rgb_timeout", "depth_timeout", "loss_grace")
LOG_MODE_RE = re.compile(r"^\[\w+\] \[(\d+\.\d+)\] \[[^\]]*\]: mode -> (\w+)")


def _settled_diag(probe, node) -> dict[str, str]:
    d = probe.settled_diagnostics(FQN, ("received.rgb", "received.depth"), children=[node])
    if d is None:
        raise node.fail("the node published no /diagnostics")
    return d


def _node_params(probe, names: tuple[str, ...]) -> dict:
    """The running node's values of ``names``; {} if it does not answer."""
    try:
        return probe.get_parameters(FQN, names)
    except TimeoutError:
        return {}


def run_case(name: str, args, probe, node, env: dict[str, str], modes: list, logdir: Path) -> dict:
    from m3l_ros.procs import Child

    reliability, profile, label = CASES[name]
    before = _settled_diag(probe, node)
    n0, prev = len(modes), (modes[-1][1] if modes else None)
    cam_env = dict(env)
    if profile:
        cam_env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(PROFILE)  # the camera's process only
    load_avg = os.getloadavg()
    cam = Child([sys.executable, str(REPO / "test" / "node_camera.py"), "--reliability", reliability,
                 "--seconds", str(args.seconds), "--rate", str(args.rate), "--stop-depth-after",
                 str(args.stop_depth_after), "--rgb-topic", f"{NS}/rgb/image", "--depth-topic", f"{NS}/depth/image"],
                env=cam_env, log_path=logdir / f"camera_{name}.log", name=f"camera ({name})", cwd=REPO,
                new_session=False)
    try:
        if not probe.spin_until(lambda: not cam.alive(), args.seconds + 120, children=[node], what="the camera"):
            raise cam.fail("the camera did not finish in time")
        if cam.returncode != 0:
            raise cam.fail(f"the camera exited with code {cam.returncode}")
        lines = [ln for ln in cam.output().splitlines() if ln.startswith("{")]
        sent = json.loads(lines[-1]) if lines else None
        if not sent or "last_depth_stamp" not in sent:
            raise cam.fail("the camera printed no result line")
        back = probe.spin_until(lambda: modes[-1][1] == "no_input", 30, children=[node], what="no_input")
        after = _settled_diag(probe, node)
        if probe.node.count_publishers(f"{FQN}/mode") != 1:  # pick_domain_id is pid-based: a clash is possible
            raise RuntimeError(f"another {FQN} shares domain {probe.domain_id}; the numbers are not this node's")
    finally:
        cam.stop(10)
    got = {m: int(after[f"received.{m}"]) - int(before[f"received.{m}"]) for m in ("rgb", "depth")}
    seen = modes[n0:]
    changes = [(t, m) for (t, m), before_m in zip(seen, [prev] + [m for _, m in seen]) if m != before_m]
    last_depth = sent["last_depth_stamp"]
    switch = next((t for t, m in changes if m == "rgb_only" and t > last_depth), None)
    logged = [(float(m.group(1)), m.group(2)) for ln in node.output().splitlines() if (m := LOG_MODE_RE.match(ln))]
    logged_switch = next((t for t, m in logged if m == "rgb_only" and t > last_depth), None)
    return dict(case=name, label=label, reliability=reliability, camera_profile=profile, sent=sent, received=got,
                mode_changes=[m for _, m in changes], mode_change_times=[t - last_depth for t, _ in changes],
                rgb_only_after_s=None if switch is None else switch - last_depth,
                node_log_rgb_only_after_s=None if logged_switch is None else logged_switch - last_depth,
                back_to_no_input=back, qos=(after.get("qos.rgb"), after.get("qos.depth")),
                backend=after.get("backend"), latency_p50_ms=after.get("latency_p50_ms"), loadavg_before=load_avg)


def _frac(got: int, sent: int) -> str:
    return f"{got}/{sent}" if got == sent else f"{got}/{sent} ({100 * got / max(sent, 1):.0f} %)"


def table(results: list[dict], args, defaults: dict, actual: dict) -> str:
    head = (f"camera (640x480 rgb8 + 16UC1, {args.rate:g} Hz, {args.seconds:g} s; depth stopped after "
            f"{args.stop_depth_after:g} s)")
    out = [f"| {head} | RGB received | depth received | mode changes | depth lost → `rgb_only` |",
           "|---|---:|---:|---:|---:|"]
    lossy = False
    for r in results:
        ch = r["mode_changes"]
        changes = (f"{len(ch)} ({', '.join(f'`{m}`' for m in ch)})" if len(ch) <= 6 else
                   f"{len(ch)}{' (flapping)' if ch.count('rgbd') > 1 else ''}")
        sw = "—" if r["rgb_only_after_s"] is None else f"{r['rgb_only_after_s']:.2f} s"
        if r["rgb_only_after_s"] is not None and r["received"]["depth"] < r["sent"]["depth"]:
            sw, lossy = sw + " †", True
        out.append(f"| {r['label']} | {_frac(r['received']['rgb'], r['sent']['rgb'])} | "
                   f"{_frac(r['received']['depth'], r['sent']['depth'])} | {changes} | {sw} |")
    par = ", ".join(f"{k} {defaults[k]:g} s" for k in TIMING)
    if actual and any(actual.get(k) != defaults[k] for k in TIMING):
        par += " (the node reported " + ", ".join(f"{k} {actual.get(k)}" for k in TIMING) + "!)"
    out += ["", "† the node missed depth frames, so its last one may predate the camera's: not timeout + grace"] * lossy
    out += ["", f"node defaults: {par}; load: {args.load} busy-loop process(es); "
            "1-min load average before each case: " + ", ".join(f"{r['case']} {r['loadavg_before'][0]:.2f}"
                                                                for r in results),
            "node latency p50 (backend) after each case: " + ", ".join(
                f"{r['case']} {float(r['latency_p50_ms']):.0f} ms ({r['backend']})" for r in results)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=36.0, help="camera run time per case (default 36)")
    p.add_argument("--stop-depth-after", type=float, default=31.0, help="depth stops after this many s (default 31)")
    p.add_argument("--rate", type=float, default=15.0, help="camera frame rate in Hz (default 15)")
    p.add_argument("--load", type=int, default=0, help="busy-loop processes running meanwhile (default 0)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--out-json", type=Path, help="write the raw numbers here")
    p.add_argument("--log-dir", type=Path, help="keep the node's and cameras' logs here (default: a temp dir)")
    try:
        args = p.parse_args(argv)
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        if not cases or any(c not in CASES for c in cases):
            p.error(f"--cases must be a comma-separated list of {', '.join(CASES)}")
        if args.load < 0 or args.seconds <= 0 or args.rate <= 0 or not 0 < args.stop_depth_after < args.seconds:
            p.error("need --load >= 0, --seconds > 0, --rate > 0 and 0 < --stop-depth-after < --seconds")
    except SystemExit as e:
        return int(e.code or 0)
    from m3l_ros.procs import FASTDDS_PROFILE_VARS

    for var in FASTDDS_PROFILE_VARS:  # this process's probe carries no profile either
        os.environ.pop(var, None)
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    from m3l_ros.node_params import PARAMS
    from m3l_ros.procs import Child, ChildError, GraphProbe, latched_qos, pick_domain_id, ros_env

    defaults = {prm.name: prm.default for prm in PARAMS if prm.name in TIMING}
    tmp = None if args.log_dir else tempfile.TemporaryDirectory(prefix="m3l_cam_dropout_")
    logdir = args.log_dir or Path(tmp.name)
    logdir.mkdir(parents=True, exist_ok=True)
    domain = pick_domain_id()
    env = ros_env(domain)
    for var in FASTDDS_PROFILE_VARS:
        env.pop(var, None)
    loads: list = []
    node = probe = None
    results: list[dict] = []
    actual: dict = {}
    node_rc = None
    try:
        loads = [Child([sys.executable, "-c", "while True: pass"], env=dict(os.environ), name=f"load {i}",
                       log_path=logdir / f"load_{i}.log", new_session=True) for i in range(args.load)]
        node = Child([sys.executable, "-m", "m3l_ros.segment_node", "--ros-args", "-r", f"__ns:={NS}"], env=env,
                     log_path=logdir / "node.log", name="segment_node", cwd=REPO, new_session=False)
        probe = GraphProbe(domain, "m3l_camera_dropout")
        modes: list[tuple[float, str]] = []  # (receipt time.time(), mode)
        probe.subscribe("mode", String, f"{FQN}/mode", latched_qos(),
                        callback=lambda m: modes.append((time.time(), m.data)))
        probe.subscribe("class_names", String, f"{FQN}/class_names", latched_qos())
        probe.subscribe("diagnostics", DiagnosticArray, "/diagnostics", 10)
        if not probe.spin_until(lambda: probe.records["class_names"] and probe.latest_diagnostics(FQN) and modes, 180,
                                children=[node], what="the node to come up"):
            raise node.fail("the node did not come up in 180 s")
        actual = _node_params(probe, TIMING)
        print(f"domain {domain}, load {args.load}, node parameters {actual or '(no answer)'}, logs in {logdir}",
              file=sys.stderr)
        for name in cases:
            r = run_case(name, args, probe, node, env, modes, logdir)
            results.append(r)
            print(f"{name}: sent {r['sent']['rgb']}/{r['sent']['depth']}, received {r['received']['rgb']}/"
                  f"{r['received']['depth']}, modes {r['mode_changes']}, rgb_only after {r['rgb_only_after_s']} s "
                  f"(node log {r['node_log_rgb_only_after_s']} s), qos {r['qos']}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except (ChildError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if probe is not None:
            probe.close()
        if node is not None:
            node_rc = node.stop(30)
            if node_rc != 0 and len(results) == len(cases):
                print(f"error: segment_node exited with code {node_rc} when stopped; its log ends:\n{node.tail()}",
                      file=sys.stderr)
        for c in loads:
            c.stop(5, sig=signal.SIGKILL)
        if tmp is not None:
            tmp.cleanup()
    if node_rc != 0:
        return 1
    print(table(results, args, defaults, actual))
    if args.out_json:
        args.out_json.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, defaults=defaults,
                                                 node_params=actual, results=results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
