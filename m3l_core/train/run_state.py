"""A run directory's state: the resumable checkpoint, metrics.jsonl, and what an interruption leaves.

``RUN/state/`` holds the student, teacher and optimizer after some step; ``manifest.json``,
written last, commits it. Every file is written atomically (a temporary file renamed over
the target), so a crash never leaves half a file; a ``kill -9`` during a write can leave the
temporary file, which :func:`clean_interrupted_writes` removes at the next start. A run killed
while appending to ``metrics.jsonl`` can leave a torn last line, which a resume drops with a warning.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from m3l_core.checkpoint import atomic_write_bytes
from m3l_core.train.ema import EMATeacher

log = logging.getLogger(__name__)

STATE_FORMAT = "m3l-ros/train-state/v1"
RUN_FILES = ("state", "metrics.jsonl", "model.safetensors")  # a directory holding one of these is a run


def check_fresh_out(out: Path) -> None:
    """Refuse to start a new run over an existing one."""
    taken = [p for p in RUN_FILES if (out / p).exists()]
    if taken:
        raise FileExistsError(f"{out}: already holds a run ({', '.join(taken)}); "
                              f"continue it with --resume {out} or choose a new --out")


def clean_interrupted_writes(out: Path) -> list[Path]:
    """Delete temporary files of atomic writes that a killed process left in ``out`` and ``out/state``."""
    removed = []
    for d in (out, out / "state"):
        if not d.is_dir():
            continue
        for p in d.iterdir():  # atomic_write_bytes names them ".<target>.<random>.tmp"
            if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.warning("removed %d temporary file(s) of interrupted writes: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(module, "module", module)
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_state(
    state_dir: Path,
    *,
    step: int,
    student: torch.nn.Module,
    teacher: EMATeacher | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: dict[str, Any],
) -> None:
    """Write the state after ``step`` completed steps; ``manifest.json``, written last, commits it.

    Weights are safetensors; the optimizer (tensors, numbers, strings) goes
    through ``torch.save`` and is read back with ``weights_only=True``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{step:08d}"
    files = {"student": f"student-{tag}.safetensors", "optimizer": f"optimizer-{tag}.pt"}
    atomic_write_bytes(state_dir / files["student"], st_save(_tensors(student)))
    if teacher is not None:
        files["teacher"] = f"teacher-{tag}.safetensors"
        atomic_write_bytes(state_dir / files["teacher"], st_save(_tensors(teacher.module)))
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}}, buf)
    atomic_write_bytes(state_dir / files["optimizer"], buf.getvalue())
    manifest = {"format": STATE_FORMAT, "step": step, "files": files, **progress}
    atomic_write_bytes(state_dir / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    keep = set(files.values()) | {"manifest.json"}
    for p in state_dir.iterdir():  # older states and leftovers of interrupted writes
        if p.name not in keep and p.is_file():
            p.unlink(missing_ok=True)


def read_manifest(state_dir: Path) -> dict[str, Any]:
    """The committed state's manifest; errors name the file."""
    path = state_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no training state to resume from") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable training state manifest ({e})") from e
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != STATE_FORMAT:
        raise ValueError(f"{path}: unsupported state format {fmt!r}, expected {STATE_FORMAT!r}")
    return manifest


def load_state(
    state_dir: Path,
    *,
    student: torch.nn.Module,
    teacher: EMATeacher | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    """Restore everything :func:`save_state` wrote; returns the manifest."""
    manifest = read_manifest(state_dir)
    files = manifest["files"]

    def weights(name: str) -> dict[str, torch.Tensor]:
        path = state_dir / files[name]
        try:
            return st_load_file(str(path))
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path}: cannot read {name} weights ({e})") from e

    getattr(student, "module", student).load_state_dict(weights("student"), strict=True)
    if teacher is not None:
        if "teacher" not in files:
            raise ValueError(f"{state_dir}: the saved run has no teacher but framework needs one")
        teacher.load_state_dict(weights("teacher"))
    path = state_dir / files["optimizer"]
    try:
        opt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read optimizer state ({e})") from e
    optimizer.load_state_dict(opt["optimizer"])
    if scaler is not None and scaler.is_enabled() and opt.get("scaler"):
        scaler.load_state_dict(opt["scaler"])
    return manifest


# --- metrics.jsonl -------------------------------------------------------------------------------


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of ``path``; a torn LAST line (a killed write) is dropped with a warning naming the file.

    Any other unreadable line is an error naming the file and the line.
    """
    lines = path.read_text().splitlines()
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if lineno == len(lines):
                log.warning("%s: dropping the torn last line %d (an interrupted write): %.60r", path, lineno, line)
                break
            raise ValueError(f"{path}:{lineno}: not a JSON record ({e}); fix or delete the line") from e
        out.append(rec)
    return out


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop records after ``step`` (written by an interrupted run past its last saved state)."""
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves its state and returns at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()  # DataLoader workers inherit the handler; only this process reacts

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after this step (state will be saved); repeat to abort", signum)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
