"""Loading the model for segment_node: checkpoint, device, precision, backend and threads -> a Segmenter."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from m3l_ros.image_codec import label_encoding
from m3l_ros.node_params import StartupError, resolve_checkpoint


def load_segmenter(values: dict[str, Any]) -> tuple[Any, Path, int]:
    """(Segmenter, checkpoint path, CPU threads used) from the node parameters; StartupError on failure."""
    ckpt = resolve_checkpoint(values["checkpoint"])
    # torch is imported only once the file exists, so a typo fails fast
    from m3l_core.checkpoint import CheckpointError
    from m3l_core.inference import Segmenter
    from m3l_core.threads import configure_threads

    threads = configure_threads(values["num_threads"])
    kwargs: dict[str, Any] = {"device": values["device"], "precision": values["precision"]}
    accepted = inspect.signature(Segmenter.from_checkpoint).parameters
    if "backend" in accepted:
        kwargs["backend"] = values["backend"]
    elif values["backend"] not in ("auto", "torch"):
        raise StartupError(f"parameter 'backend' is {values['backend']!r} but this m3l_core.inference.Segmenter "
                           "only runs torch; use backend:=auto or torch")
    if "num_threads" in accepted:
        kwargs["num_threads"] = values["num_threads"]
    try:
        seg = Segmenter.from_checkpoint(ckpt, **kwargs)
    except (CheckpointError, ValueError, RuntimeError, ImportError, OSError) as e:
        settings = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise StartupError(f"cannot start the model from {ckpt} (parameters checkpoint={values['checkpoint']!r}, "
                           f"{settings}): {e}") from e
    return seg, ckpt, threads


def backend_name(seg: Any) -> str:
    """The backend actually used (``torch`` for a Segmenter that predates backends)."""
    return str(getattr(seg, "backend", "torch"))


def class_names_json(class_names: list[str], palette: np.ndarray) -> str:
    """Payload of ``~/class_names``: index i of ``class_names`` is label id i."""
    return json.dumps({
        "class_names": list(class_names),
        "palette": np.asarray(palette, dtype=int).tolist(),
        "label_encoding": label_encoding(len(class_names)),
    })
