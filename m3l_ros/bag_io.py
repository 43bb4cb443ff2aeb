"""Write and read rosbag2 bags with ``rosbags`` (pure Python, no rosbag2/rclpy needed).

Written bags are what ``ros2 bag play`` (Jazzy) accepts: metadata version 9,
CDR serialization, MCAP (default) or sqlite3 storage, and message definitions
from the Jazzy typestore embedded in the bag.

A camera frame becomes up to four messages with one shared stamp (the bag's
log time equals the header stamp):

* RGB ``rgb8`` image,
* aligned depth ``16UC1`` in millimetres (REP 118: 0 is invalid); input depth goes through
  the project's one validity rule (``m3l_core.preprocess.depth_to_metres``: 0, NaN, +/-Inf,
  65535 in uint16, optional ``max_depth``), so every invalid pixel is written as 0,
* a ``CameraInfo`` from a calibration file (``m3l_ros.bag_camera_info``) or an ideal
  pinhole consistent with the image size,
* ground-truth class ids as ``mono8`` (255 = ignore) when the frame is labelled.

The ground-truth message of a frame is written first, so a replay publishes it
before the inputs and an evaluator holds the ground truth when the labels come back.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from m3l_core.preprocess import depth_to_metres, depth_units_warning
from m3l_ros.bag_camera_info import CameraCalibration, camera_info_msg, pinhole_calibration
from m3l_ros.image_codec import encode_image

log = logging.getLogger(__name__)

STORAGES = ("mcap", "sqlite3")
DEFAULT_FRAME_ID = "camera_color_optical_frame"
MAX_16UC1_MM = 65535


def get_typestore():
    """The rosbags typestore matching ROS 2 Jazzy (the LTS the project targets)."""
    from rosbags.typesys import Stores, get_typestore as _get

    return _get(Stores.ROS2_JAZZY)


@dataclass(frozen=True)
class BagTopics:
    """Topic names in a written bag. Defaults are the RealSense driver's (realsense2_camera 4.x)."""

    rgb: str = "/camera/camera/color/image_raw"
    depth: str = "/camera/camera/aligned_depth_to_color/image_raw"
    camera_info: str = "/camera/camera/color/camera_info"
    labels: str = "/camera/camera/ground_truth/labels"


@dataclass
class BagWriterConfig:
    """How frames become a bag."""

    storage: str = "mcap"  # mcap is the rosbag2 default since Iron; sqlite3 for older tooling
    topics: BagTopics = field(default_factory=BagTopics)
    fps: float = 30.0  # stamps are start + i / fps
    start_ns: int = 1_700_000_000_000_000_000  # stamp of frame 0 (ns since epoch)
    frame_id: str = DEFAULT_FRAME_ID
    hfov_deg: float = 69.4  # D435 colour camera; only used to invent pinhole intrinsics
    calibration: CameraCalibration | None = None  # real intrinsics; None = pinhole from hfov_deg
    write_labels: bool = True  # ground truth is written only for frames that have a label
    max_depth: float | None = None  # metres; farther depth is written as invalid (0)

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 0 < self.hfov_deg < 180:
            raise ValueError(f"hfov_deg must be in (0, 180), got {self.hfov_deg}")
        if self.start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {self.start_ns}")
        if self.max_depth is not None and not self.max_depth > 0:
            raise ValueError(f"max_depth must be > 0 metres, got {self.max_depth}")

    def calibration_for(self, height: int, width: int) -> CameraCalibration:
        return self.calibration or pinhole_calibration(height, width, self.hfov_deg)


@dataclass
class BagSummary:
    """What :func:`write_frames` wrote."""

    path: Path
    storage: str
    frames: int
    counts: dict[str, int]
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class TopicInfo:
    msgtype: str
    count: int


@dataclass
class BagInfo:
    """Topics, counts and time span of a bag (from its metadata)."""

    path: Path
    start_ns: int
    end_ns: int
    topics: dict[str, TopicInfo]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9


# ---------------------------------------------------------------------------------------------
# Pure conversions
# ---------------------------------------------------------------------------------------------

def depth_to_16uc1(depth_m: np.ndarray) -> np.ndarray:
    """float metres (NaN/Inf/<=0 invalid) -> uint16 millimetres with 0 = invalid (REP 118).

    Apply :func:`m3l_core.preprocess.depth_to_metres` first for any other input
    (:func:`frame_messages` does).

    Depth beyond 65.535 m cannot be represented in ``16UC1`` and becomes 0 (invalid)
    rather than being clipped to a wrong distance.
    """
    d = np.asarray(depth_m, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {d.shape}")
    mm = np.zeros(d.shape, dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(d) & (d > 0)
        r = np.rint(d * 1000.0)
        ok &= r <= MAX_16UC1_MM
    mm[ok] = r[ok].astype(np.uint16)
    return mm


def stamp_ns(config: BagWriterConfig, index: int) -> int:
    """Stamp of frame ``index``: start + index / fps, rounded to the nanosecond."""
    return config.start_ns + int(round(index * 1e9 / config.fps))


# ---------------------------------------------------------------------------------------------
# rosbags message construction
# ---------------------------------------------------------------------------------------------

def _header(ts, stamp: int, frame_id: str):
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)


def image_msg(ts, arr: np.ndarray, encoding: str, stamp: int, frame_id: str):
    """A rosbags ``sensor_msgs/msg/Image`` from an array via the project's image codec."""
    arr = np.ascontiguousarray(arr)
    step, data = encode_image(arr, encoding)
    Image = ts.types["sensor_msgs/msg/Image"]
    return Image(
        header=_header(ts, stamp, frame_id),
        height=int(arr.shape[0]),
        width=int(arr.shape[1]),
        encoding=encoding,
        is_bigendian=0,
        step=int(step),
        data=np.frombuffer(data, dtype=np.uint8),
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def frame_messages(ts, sample: dict, stamp: int, config: BagWriterConfig) -> list[tuple[str, str, Any]]:
    """The (topic, msgtype, message) list for one raw sample, ground truth first."""
    topics = config.topics
    rgb = sample.get("rgb")
    depth = sample.get("depth")
    label = sample.get("label")
    name = sample.get("name", "?")
    shape = None
    out: list[tuple[str, str, Any]] = []
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"frame {name!r}: rgb must be HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
        shape = rgb.shape[:2]
    if depth is not None:
        depth = np.asarray(depth)
        if depth.ndim != 2:
            raise ValueError(f"frame {name!r}: depth must be HxW, got {depth.shape}")
        if shape is not None and depth.shape != shape:
            raise ValueError(f"frame {name!r}: depth {depth.shape} does not match rgb {shape}")
        shape = shape or depth.shape
    if shape is None:
        raise ValueError(f"frame {name!r} has neither rgb nor depth")
    if label is not None and config.write_labels:
        label = np.asarray(label)
        if label.shape != shape or label.dtype != np.uint8:
            raise ValueError(f"frame {name!r}: label must be {shape} uint8, got {label.shape} {label.dtype}")
        out.append((topics.labels, "sensor_msgs/msg/Image", image_msg(ts, label, "mono8", stamp, config.frame_id)))
    calib = config.calibration_for(*shape)
    out.append((
        topics.camera_info,
        "sensor_msgs/msg/CameraInfo",
        camera_info_msg(ts, calib, shape[0], shape[1], stamp, config.frame_id, _header),
    ))
    if depth is not None:
        try:
            mm = depth_to_16uc1(depth_to_metres(depth, max_depth=config.max_depth))
        except ValueError as e:
            raise ValueError(f"frame {name!r}: {e}") from e
        out.append((topics.depth, "sensor_msgs/msg/Image", image_msg(ts, mm, "16UC1", stamp, config.frame_id)))
    if rgb is not None:
        out.append((topics.rgb, "sensor_msgs/msg/Image", image_msg(ts, rgb, "rgb8", stamp, config.frame_id)))
    return out


def write_frames(
    path: str | Path,
    frames: Iterable[dict],
    *,
    config: BagWriterConfig | None = None,
    total: int | None = None,
    progress: bool = True,
) -> BagSummary:
    """Write raw samples (``rgb``/``depth``/``label``/``name`` dicts) as a rosbag2 bag at ``path``.

    ``path`` must not exist. Frames are stamped ``start_ns + i / fps``. On an error the
    partially written bag is removed so a retry with the same path works.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    config = config or BagWriterConfig()
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"bag output path already exists: {path} (rosbag2 bags are never overwritten)")
    ts = get_typestore()
    plugin = StoragePlugin.MCAP if config.storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=9, storage_plugin=plugin)
    connections: dict[str, Any] = {}
    counts: dict[str, int] = {}
    n = 0
    first = last = None
    units_checked = False  # the units check looks at the first depth frame of the bag
    writer.open()
    try:
        bar = tqdm(frames, total=total, desc=f"bag {path.name}", unit="frame", disable=not progress)
        for i, sample in enumerate(bar):
            stamp = stamp_ns(config, i)
            for topic, msgtype, msg in frame_messages(ts, sample, stamp, config):
                conn = connections.get(topic)
                if conn is None:
                    conn = connections[topic] = writer.add_connection(topic, msgtype, typestore=ts)
                elif conn.msgtype != msgtype:
                    raise ValueError(f"topic {topic!r} used for both {conn.msgtype} and {msgtype}")
                writer.write(conn, stamp, ts.serialize_cdr(msg, msgtype))
                counts[topic] = counts.get(topic, 0) + 1
            if not units_checked and sample.get("depth") is not None:
                units_checked = True
                msg = depth_units_warning(depth_to_metres(np.asarray(sample["depth"])))
                if msg:
                    log.warning("%s: frame %r: %s", path, sample.get("name", i), msg)
            first = stamp if first is None else first
            last = stamp
            n += 1
    except BaseException:
        writer.abort()
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        raise
    if n == 0:
        writer.abort()
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        raise ValueError(f"no frames to write to {path}")
    writer.close()
    log.debug("wrote %d frames to %s (%s): %s", n, path, config.storage, counts)
    return BagSummary(path=path, storage=config.storage, frames=n, counts=counts, start_ns=first, end_ns=last)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _open_reader(path: str | Path):
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise FileNotFoundError(f"not a rosbag2 bag directory (no metadata.yaml): {path}")
    return AnyReader([path], default_typestore=get_typestore())


def bag_info(path: str | Path) -> BagInfo:
    """Topics (type and message count) and time span of a bag."""
    with _open_reader(path) as reader:
        topics = {name: TopicInfo(msgtype=info.msgtype or "", count=int(info.msgcount))
                  for name, info in reader.topics.items()}
        if reader.message_count == 0:
            raise ValueError(f"bag has no messages: {path}")
        # rosbags' end_time is one past the last message; report the last message's time.
        return BagInfo(path=Path(path), start_ns=int(reader.start_time), end_ns=int(reader.end_time) - 1, topics=topics)


def _check_topics(path: Path, have: Iterable[str], want: Iterable[str] | None) -> None:
    if want is None:
        return
    have = set(have)
    missing = [t for t in want if t not in have]
    if missing:
        raise KeyError(f"topic(s) {missing} not in bag {path}; it has {sorted(have)}")


def iter_raw(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """Serialized messages in log-time order: ``(topic, msgtype, timestamp_ns, cdr_bytes)``.

    Streams from disk, so bags larger than memory replay fine.
    """
    topics = None if topics is None else list(topics)
    with _open_reader(path) as reader:
        _check_topics(Path(path), (c.topic for c in reader.connections), topics)
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, timestamp, data in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(timestamp), bytes(data)


def read_bag(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """Deserialized messages in log-time order: ``(topic, timestamp_ns, msg)`` (rosbags message classes)."""
    topics = None if topics is None else list(topics)
    with _open_reader(path) as reader:
        _check_topics(Path(path), (c.topic for c in reader.connections), topics)
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, timestamp, data in reader.messages(connections=conns):
            yield conn.topic, int(timestamp), reader.deserialize(data, conn.msgtype)


def msgtype_has_leading_header(msgtype: str, typestore=None) -> bool:
    """True when the message's first field is a ``std_msgs/msg/Header`` (so its stamp sits at a fixed CDR offset)."""
    ts = typestore or get_typestore()
    defs = ts.fielddefs.get(msgtype)
    if not defs or not defs[1]:
        return False
    _name, (_kind, ref) = defs[1][0]
    return ref == "std_msgs/msg/Header"


def _cdr_order(data: bytes) -> str:
    if len(data) < 12:
        raise ValueError(f"CDR message too short for a header stamp ({len(data)} bytes)")
    kind = data[1]
    if kind not in (0, 1):
        raise ValueError(f"unsupported CDR encapsulation {data[:2].hex()}")
    return "<" if kind == 1 else ">"


def cdr_header_stamp(data: bytes) -> int:
    """The header stamp (ns) of a CDR message whose first field is a ``std_msgs/Header``."""
    sec, nsec = struct.unpack_from(_cdr_order(data) + "iI", data, 4)
    return sec * 1_000_000_000 + nsec


def restamp_cdr(data: bytes, stamp: int) -> bytes:
    """Copy of a CDR message (first field ``std_msgs/Header``) with its header stamp replaced.

    The stamp is the first 8 bytes after the 4-byte encapsulation header, so this is a
    byte patch: no deserialization, identical to re-serializing with the new stamp.
    """
    if stamp < 0:
        raise ValueError(f"stamp must be >= 0, got {stamp}")
    out = bytearray(data)
    struct.pack_into(_cdr_order(data) + "iI", out, 4, stamp // 1_000_000_000, stamp % 1_000_000_000)
    return bytes(out)
