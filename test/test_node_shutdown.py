"""Issue 9 item 6: shutdown of ``python -m m3l_ros.segment_node`` by signals, with no traceback.

Exit status 0 for every requested stop (SIGINT, SIGTERM, repeated or mixed, also while the model
loads). Processes only; each case runs its own node on its own graph, all cases at once.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from ros_helpers import NodeProcess

READY, LOADING = "ready:", "loading the model"
# name -> (log line to wait for, [(signal, delay before it in s)])
CASES = {
    "double SIGINT 5 ms": (READY, [(signal.SIGINT, 0.0), (signal.SIGINT, 0.005)]),
    "double SIGINT 20 ms": (READY, [(signal.SIGINT, 0.0), (signal.SIGINT, 0.020)]),
    "double SIGINT 50 ms": (READY, [(signal.SIGINT, 0.0), (signal.SIGINT, 0.050)]),
    "SIGTERM then SIGINT": (READY, [(signal.SIGTERM, 0.0), (signal.SIGINT, 0.005)]),
    "SIGTERM while loading the model": (LOADING, [(signal.SIGTERM, 0.0)]),
}


@pytest.mark.timeout(240)
def test_signals_end_the_node_cleanly_with_status_0(tiny_checkpoint, tmp_path):
    pytest.importorskip("rclpy")
    from m3l_ros.procs import pick_domain_id, ros_env

    procs = {}
    for k, name in enumerate(CASES):
        procs[name] = NodeProcess(["-p", f"checkpoint:={tiny_checkpoint}", "-p", "device:=cpu",
                                   "-r", f"__ns:=/m3l_sig{k}"], env=ros_env(pick_domain_id() + 101 + k),
                                  log_path=tmp_path / f"node{k}.log")
    try:
        pending = dict(CASES)
        deadline = time.monotonic() + 150
        while pending and time.monotonic() < deadline:
            for name, (wait_for, signals) in list(pending.items()):
                proc = procs[name]
                if wait_for in proc.output() or not proc.alive():
                    for sig, delay in signals:
                        time.sleep(delay)
                        proc.send(sig)
                    del pending[name]
            time.sleep(0.002)
        assert not pending, f"never saw the expected log line for {sorted(pending)}"
        for name, proc in procs.items():
            rc = proc.wait(60)
            out = proc.output()
            assert rc == 0, f"{name}: exit status {rc}\n{out}"
            assert "Traceback" not in out and "KeyboardInterrupt" not in out, f"{name}:\n{out}"
            if CASES[name][0] == LOADING:
                assert READY not in out or out.index(READY) > out.index(LOADING), name
    finally:
        for proc in procs.values():
            proc.stop()
