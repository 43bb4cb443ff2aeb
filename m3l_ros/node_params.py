"""segment_node's parameter table: names, defaults, ranges, descriptions and validation.

One table (:data:`PARAMS`) feeds the declarations, ``config/segment.yaml`` (a test checks they
agree) and the README's parameter table. rclpy enforces ranges and ``read_only`` from the
descriptors; :func:`validate_params` checks what a range cannot express.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3l_core.vocab import PRECISIONS

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "models" / "demo.safetensors"
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
RELIABILITIES = ("auto", "reliable", "best_effort")
TRANSPORTS = ("raw", "compressed")
BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
MAX_INPUT_PIXELS = 3840 * 2160  # 4K UHD: larger frames are rejected before decoding


class StartupError(RuntimeError):
    """A configuration problem that stops the node before it runs (clean message, exit code 1)."""


def resolve_checkpoint(value: str) -> Path:
    """The ``checkpoint`` parameter -> an existing file. Empty means the bundled demo model."""
    if value.strip():
        path = Path(value).expanduser()
        what = f"parameter 'checkpoint' is {value!r}"
    else:
        path = DEFAULT_CHECKPOINT
        what = "parameter 'checkpoint' is empty, which selects the bundled demo model"
    if not path.is_file():
        raise StartupError(f"checkpoint file not found: {path} ({what}); "
                           "pass -p checkpoint:=/path/to/model.safetensors")
    return path


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None  # inclusive bounds, enforced by rclpy
    choices: tuple[str, ...] = ()  # checked in validate_params()


PARAMS = (
    Param("checkpoint", "", "Path to a .safetensors checkpoint or an exported model. Empty = the bundled demo "
          "model (m3l_ros/models/demo.safetensors).", read_only=True),
    Param("device", "auto", "Inference device: auto (CUDA if available), cpu, cuda or cuda:N.",
          read_only=True, choices=("auto", "cpu", "cuda", "cuda:N")),
    Param("precision", "fp32", "Inference precision: fp32, bf16, fp16 (CUDA only), or auto (bf16 with OpenVINO "
          "on CPUs with native bf16, fp16 with TensorRT, else fp32; 3.5-5.7x torch fp32 for LF MiT-B2).",
          read_only=True, choices=("auto", *PRECISIONS)),
    Param("backend", "auto", "Inference backend: auto (the fastest installed for the device), torch, "
          "onnxruntime, openvino or tensorrt. The one used is logged and in diagnostics.",
          read_only=True, choices=BACKENDS),
    Param("num_threads", 0, "CPU threads for inference; 0 = auto (half the usable cores, at least 1).",
          read_only=True, range=(0, 256)),
    Param("image_transport", "raw", "raw: sensor_msgs/Image on rgb/image and depth/image. compressed: "
          "sensor_msgs/CompressedImage on rgb/image/compressed (jpeg, png) and depth/image/compressedDepth.",
          read_only=True, choices=TRANSPORTS),
    Param("rgb_timeout", 1.0, "Seconds (node clock) without a usable RGB frame before RGB counts as lost.",
          range=(0.01, 60.0)),
    Param("depth_timeout", 1.0, "Seconds (node clock) without a usable depth frame before depth counts as lost.",
          range=(0.01, 60.0)),
    Param("loss_grace", 0.15, "Seconds after one stream's timeout before switching to the single-modality "
          "mode; when the other stream stops within it, the mode goes straight to no_input.", range=(0.0, 10.0)),
    Param("sync_slop", 0.02, "Max difference in seconds between RGB and depth header stamps to pair them. "
          "Both alive and nothing paired for max(1 s, 2 x the larger timeout) gives mode 'unsynced'.",
          range=(0.0, 10.0)),
    Param("min_valid_depth_fraction", 0.05, "A depth image with a smaller fraction of valid pixels "
          "counts as missing.", range=(0.0, 1.0)),
    Param("max_depth", 0.0, "Depth beyond this many metres is invalid; 0 = no limit.", range=(0.0, 1000.0)),
    Param("max_input_pixels", MAX_INPUT_PIXELS, "Larger input images (width x height) are rejected before "
          "decoding and counted.", range=(1, 2**31 - 1)),
    Param("qos_reliability", "auto", "Input reliability: auto matches the publishers (reliable when every "
          "publisher is, else best_effort; re-checked as publishers come and go), or reliable / best_effort.",
          read_only=True, choices=RELIABILITIES),
    Param("qos_depth", 5, "Input queue depth (the node always segments the newest frame or pair).",
          read_only=True, range=(1, 100)),
    Param("publish_colored", True, "Publish ~/colored (computed only while it has subscribers)."),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages and periodic ~/mode messages "
          "(wall clock, so they keep coming while a bag is paused).", read_only=True, range=(0.05, 60.0)),
)
LIVE_PARAMS = frozenset(p.name for p in PARAMS if not p.read_only)


def descriptor(p: Param):
    """The rclpy ParameterDescriptor for ``p``."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    d = ParameterDescriptor(description=p.description, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = f"one of: {', '.join(p.choices)}"
    if p.range is not None:
        if isinstance(p.default, int) and not isinstance(p.default, bool):
            d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]), to_value=float(p.range[1]),
                                                         step=0.0)]
    return d


def validate_params(values: dict[str, Any]) -> None:
    """Checks rclpy cannot express as a range; raises StartupError naming the parameter."""
    if not DEVICE_RE.match(str(values["device"])):
        raise StartupError(f"parameter 'device' is {values['device']!r}; expected auto, cpu, cuda or cuda:N")
    for p in PARAMS:
        if p.choices and p.name != "device" and values[p.name] not in p.choices:
            raise StartupError(f"parameter '{p.name}' is {values[p.name]!r}; expected one of {', '.join(p.choices)}")


def declare_parameters(node) -> dict[str, Any]:
    """Declare every parameter of :data:`PARAMS` on ``node``; the values, validated."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    values = {}
    for p in PARAMS:
        try:
            values[p.name] = node.declare_parameter(p.name, p.default, descriptor(p)).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as e:
            raise StartupError(f"parameter '{p.name}': {e}") from e
    validate_params(values)
    return values
