"""OpenVINO's CPU plugin and signal stacks: a process that used it survives later signals.

OpenVINO's CPU plugin installs an alternate signal stack on the thread that creates it and unmaps
it when the plugin is destroyed, even on another thread. A later handled signal on the creating
thread (torch's DataLoader SIGCHLD handler when a child exits) then kills the process with SIGSEGV
and no traceback: this was the crash ~80 s into a one-process run of the test suite.
``m3l_core.backends.openvino_core`` keeps one Core alive for the process.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import gc, signal, subprocess, sys, threading
    import numpy as np
    from m3l_core.inference import Segmenter

    seg = Segmenter.from_checkpoint(sys.argv[1], device="cpu", backend="openvino", num_threads=1)
    seg.predict(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32), np.float32))
    box = [seg]
    del seg

    def drop():  # the garbage collector may free the segmenter on any thread
        box.clear()
        gc.collect()

    t = threading.Thread(target=drop)
    t.start()
    t.join()
    signal.signal(signal.SIGCHLD, lambda *a: None)  # as torch's DataLoader installs
    for _ in range(3):
        subprocess.run(["true"], check=True)
    print("alive")
""")


@pytest.mark.timeout(240)
def test_process_survives_signals_after_an_openvino_segmenter_is_freed_on_another_thread(tiny_checkpoint):
    pytest.importorskip("openvino")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_checkpoint)], capture_output=True, text=True,
                          timeout=200)
    assert proc.returncode == 0, f"exit {proc.returncode} (-11 or 139 = SIGSEGV)\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().endswith("alive")


def test_one_openvino_core_per_process():
    pytest.importorskip("openvino")
    from m3l_core.backends import openvino_core

    assert openvino_core() is openvino_core()
