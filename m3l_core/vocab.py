"""The project's shared vocabulary: modalities, input modes, evaluation conditions, precisions.

Every other module imports these names from here; nothing else defines them.

- A *modality* is one input stream: ``rgb`` or ``depth``.
- *Presence* says which modalities a sample has, always in ``MODALITIES`` order
  (``(rgb_present, depth_present)``). The model's ``forward`` takes it as a boolean mask.
- A *mode* is what the ROS node reports on ``~/mode``: which streams are alive.
- A *condition* is an evaluation setting (the paper's RGB-D, RGB only, depth only).
"""
from __future__ import annotations

MODALITIES: tuple[str, str] = ("rgb", "depth")

# Node modes -> presence (rgb, depth) of what is segmented. ``no_input``: nothing is segmented or
# published. ``unsynced``: both streams are alive but their stamps never pair (offset beyond
# ``sync_slop``), so RGB is segmented with the learned depth token; listed after ``rgb_only`` so
# ``mode_for`` maps that presence to ``rgb_only``.
MODE_PRESENCE: dict[str, tuple[bool, bool]] = {
    "rgbd": (True, True),
    "rgb_only": (True, False),
    "depth_only": (False, True),
    "no_input": (False, False),
    "unsynced": (True, False),
}
MODES: tuple[str, ...] = tuple(MODE_PRESENCE)
RGBD, RGB_ONLY, DEPTH_ONLY, NO_INPUT, UNSYNCED = MODES

# Evaluation conditions -> presence (rgb, depth).
CONDITION_PRESENCE: dict[str, tuple[bool, bool]] = {
    "rgbd": (True, True),
    "rgb": (True, False),
    "depth": (False, True),
}
CONDITIONS: tuple[str, ...] = tuple(CONDITION_PRESENCE)
CONDITION_TITLES: dict[str, str] = {"rgbd": "RGB-D", "rgb": "RGB only", "depth": "Depth only",
                                    "mm_robust": "MM-Robust"}

# Label value that marks pixels without a class (unlabeled, invalid); the datasets' default.
IGNORE_INDEX: int = 255

# Numeric precisions by name (the torch dtypes live in m3l_core.inference, which imports torch).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def mode_for(*, rgb: bool, depth: bool) -> str:
    """The mode for the given presence."""
    for mode, presence in MODE_PRESENCE.items():
        if presence == (bool(rgb), bool(depth)):
            return mode
    raise AssertionError("unreachable")


def condition_for(*, rgb: bool, depth: bool) -> str:
    """The evaluation condition for the given presence (``ValueError`` when both are absent)."""
    for cond, presence in CONDITION_PRESENCE.items():
        if presence == (bool(rgb), bool(depth)):
            return cond
    raise ValueError("no modality present: there is no evaluation condition without input")


def colorize(labels, palette, ignore_index: int | None = None):
    """HxW class ids -> HxWx3 uint8 with ``palette`` (Cx3). The one colouring rule of the project.

    Ids outside ``[0, len(palette))`` and ``ignore_index`` (if given) are black, so a label image
    with an unknown id still renders instead of raising.
    """
    import numpy as np

    labels = np.asarray(labels)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((len(pal) + 1, 3), np.uint8)  # last row: black for everything else
    lut[: len(pal)] = pal
    idx = labels.astype(np.int64, copy=False)
    bad = (idx < 0) | (idx >= len(pal))
    if ignore_index is not None:
        bad |= idx == ignore_index
    return lut[np.where(bad, len(pal), idx)]
