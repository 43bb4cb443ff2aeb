"""Camera intrinsics for recorded bags: a calibration file, or an ideal pinhole from a field of view.

``record --camera-info FILE`` accepts the two formats users have at hand:

* the ``camera_calibration`` / ``camera_info_manager`` YAML (``image_width``,
  ``image_height``, ``camera_matrix``, ``distortion_model``,
  ``distortion_coefficients``, ``rectification_matrix``, ``projection_matrix``,
  each matrix as ``{rows, cols, data}``), as written by ``ros2 run camera_calibration``;
* a JSON (or YAML) object with ``K`` (3x3 nested or 9 flat numbers) and ``D``
  (distortion coefficients), optionally ``width``/``height``, ``R``, ``P``,
  ``distortion_model`` (default ``plumb_bob``, or ``rational_polynomial`` for 8 values).

Without a file, intrinsics are an ideal pinhole with square pixels (``--hfov``).
Pure Python: no ROS needed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class CameraInfoError(ValueError):
    """A calibration file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class CameraCalibration:
    """What a ``sensor_msgs/CameraInfo`` carries besides the header. ``width``/``height`` None: any size."""

    k: tuple[float, ...]  # 3x3 row-major
    d: tuple[float, ...]
    r: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    p: tuple[float, ...] | None = None  # 3x4 row-major; None: [K | 0]
    distortion_model: str = "plumb_bob"
    width: int | None = None
    height: int | None = None
    source: str = "<pinhole>"

    def projection(self) -> tuple[float, ...]:
        if self.p is not None:
            return self.p
        k = self.k
        return (k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0)

    def check_size(self, height: int, width: int) -> None:
        """Calibrations hold for one resolution: refuse frames of another size."""
        if self.width is not None and (self.width, self.height) != (width, height):
            raise CameraInfoError(f"{self.source}: calibration is for {self.width}x{self.height} images, "
                                  f"the frames are {width}x{height} (WxH)")


def pinhole_intrinsics(height: int, width: int, hfov_deg: float) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of an ideal pinhole with square pixels and the given horizontal FOV."""
    fx = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return fx, fx, (width - 1) / 2.0, (height - 1) / 2.0


def pinhole_calibration(height: int, width: int, hfov_deg: float) -> CameraCalibration:
    fx, fy, cx, cy = pinhole_intrinsics(height, width, hfov_deg)
    return CameraCalibration(k=(fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0), d=(0.0,) * 5, width=width, height=height,
                             source=f"<pinhole hfov {hfov_deg} deg>")


def _numbers(value: Any, n: int | None, src: str, field: str) -> tuple[float, ...]:
    if isinstance(value, dict):  # camera_calibration matrix: {rows, cols, data}
        if "data" not in value:
            raise CameraInfoError(f"{src}: field '{field}': matrix needs a 'data' list")
        rows, cols, value = value.get("rows"), value.get("cols"), value["data"]
        if rows is not None and cols is not None and rows * cols != len(value or []):
            raise CameraInfoError(f"{src}: field '{field}': {rows}x{cols} matrix with {len(value or [])} values")
    arr = np.asarray(value if value is not None else [], dtype=object).ravel()
    try:
        out = tuple(float(v) for v in arr)
    except (TypeError, ValueError):
        raise CameraInfoError(f"{src}: field '{field}': expected numbers, got {value!r:.60}") from None
    if n is not None and len(out) != n:
        raise CameraInfoError(f"{src}: field '{field}': expected {n} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise CameraInfoError(f"{src}: field '{field}': values must be finite")
    return out


def _size(doc: dict, keys: Sequence[str], src: str) -> int | None:
    for key in keys:
        if key in doc:
            v = doc[key]
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise CameraInfoError(f"{src}: field '{key}': expected a positive integer, got {v!r}")
            return v
    return None


def _first(doc: dict, *keys: str) -> tuple[str | None, Any]:
    return next(((k, doc[k]) for k in keys if k in doc), (None, None))


def calibration_from_dict(doc: Any, source: str = "<dict>") -> CameraCalibration:
    """Either format (see the module doc) as a :class:`CameraCalibration`."""
    if not isinstance(doc, dict):
        raise CameraInfoError(f"{source}: expected a mapping with camera_matrix or K, got {type(doc).__name__}")
    kname, kval = _first(doc, "camera_matrix", "K", "k")
    if kname is None:
        raise CameraInfoError(f"{source}: field 'camera_matrix' (or 'K'): missing")
    k = _numbers(kval, 9, source, kname)
    if k[0] <= 0 or k[4] <= 0 or k[8] != 1.0 or k[1] != 0.0 or k[3] != 0.0 or k[6:8] != (0.0, 0.0):
        raise CameraInfoError(f"{source}: field '{kname}': not a camera matrix [fx 0 cx; 0 fy cy; 0 0 1] "
                              f"with fx, fy > 0: {list(k)}")
    dname, dval = _first(doc, "distortion_coefficients", "D", "d")
    d = _numbers(dval, None, source, dname or "D")
    model = doc.get("distortion_model") or ("rational_polynomial" if len(d) == 8 else "plumb_bob")
    if not isinstance(model, str):
        raise CameraInfoError(f"{source}: field 'distortion_model': expected a string, got {model!r}")
    if model == "plumb_bob" and len(d) not in (0, 5):
        raise CameraInfoError(f"{source}: field '{dname}': plumb_bob needs 5 coefficients, got {len(d)}")
    d = d or (0.0,) * 5
    rname, rval = _first(doc, "rectification_matrix", "R", "r")
    pname, pval = _first(doc, "projection_matrix", "P", "p")
    r = _numbers(rval, 9, source, rname) if rname else CameraCalibration.r
    p = _numbers(pval, 12, source, pname) if pname else None
    width = _size(doc, ("image_width", "width"), source)
    height = _size(doc, ("image_height", "height"), source)
    if (width is None) != (height is None):
        raise CameraInfoError(f"{source}: give both image width and height, or neither")
    return CameraCalibration(k=k, d=d, r=r, p=p, distortion_model=model, width=width, height=height, source=source)


def load_calibration(path: str | Path) -> CameraCalibration:
    """Read a camera_calibration YAML or K/D JSON file; errors name the file and the field."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CameraInfoError(f"{path}: cannot read camera info: {e.strerror or e}") from e
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise CameraInfoError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}") from e
    return calibration_from_dict(doc, str(path))


def camera_info_msg(ts, calib: CameraCalibration, height: int, width: int, stamp: int, frame_id: str, header):
    """A rosbags ``sensor_msgs/msg/CameraInfo`` for an image of this size (``header`` builds the header)."""
    calib.check_size(height, width)
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    return CameraInfo(
        header=header(ts, stamp, frame_id),
        height=int(height),
        width=int(width),
        distortion_model=calib.distortion_model,
        d=np.asarray(calib.d, dtype=np.float64),
        k=np.asarray(calib.k, dtype=np.float64),
        r=np.asarray(calib.r, dtype=np.float64),
        p=np.asarray(calib.projection(), dtype=np.float64),
        binning_x=0,
        binning_y=0,
        roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )
