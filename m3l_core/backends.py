"""Inference backends behind ``Segmenter``: torch, ONNX Runtime, OpenVINO and TensorRT.

Every backend runs the same graph, ``LinearFusionSegFormer`` with the presence mask as an
input, and maps the model inputs ``rgb (1,3,h,w)``, ``depth (1,1,h,w)`` float32 and
``present (1,2)`` bool to the ensemble logits ``(1,C,h,w)`` at the model input size.
Preprocessing before and the upsampling/argmax after are ``Segmenter``'s, one code path for
every backend. Exported files carry the checkpoint metadata (``META_KEY``), so a ``.onnx``,
OpenVINO ``.xml`` or TensorRT engine is self-describing (see m3l_core/export.py).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3l_core.vocab import PRECISIONS

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino", "tensorrt")
INPUT_NAMES: tuple[str, str, str] = ("rgb", "depth", "present")
OUTPUT_NAME = "logits"
META_KEY = "m3l"  # ONNX metadata_props key / OpenVINO rt_info section / engine sidecar key
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
assert set(TORCH_DTYPES) == set(PRECISIONS)


def installed(backend: str) -> bool:
    """Whether the backend's Python package can be imported (without importing it)."""
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}[backend]
    return importlib.util.find_spec(module) is not None


def artifact_kind(path: str | Path) -> str:
    """``checkpoint`` | ``onnx`` | ``openvino`` | ``tensorrt`` from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".xml":
        return "openvino"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    return "checkpoint"


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX): the condition for bf16 being fast, not emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_backend(requested: str, kind: str, device: torch.device) -> str:
    """Resolve ``auto``: TensorRT (else torch) on CUDA, OpenVINO on CPUs where installed, else torch.

    An exported file narrows the choice: an engine is TensorRT, an ``.xml`` OpenVINO, an
    ``.onnx`` OpenVINO or ONNX Runtime (whichever is installed).
    """
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {requested!r}")
    allowed = {"checkpoint": BACKENDS, "onnx": ("openvino", "onnxruntime"), "openvino": ("openvino",),
               "tensorrt": ("tensorrt",)}[kind]
    if requested != "auto":
        if requested not in allowed:
            raise ValueError(f"backend {requested!r} cannot run a {kind} file; use one of {allowed}")
        if not installed(requested):
            raise RuntimeError(f"backend {requested!r} is not installed "
                               "(see requirements/ml.txt, requirements/gpu.txt)")
        return requested
    if device.type == "cuda":  # an .onnx file runs on ONNX Runtime's CUDA provider (onnxruntime-gpu)
        order = ("onnxruntime",) if kind == "onnx" else ("tensorrt", "torch")
    else:
        order = ("openvino", "onnxruntime", "torch") if kind == "onnx" else ("openvino", "torch")
    for name in order:
        if name in allowed and installed(name):
            return name
    raise RuntimeError(f"no installed backend can run a {kind} file on {device}; install one of {allowed}")


def resolve_precision(precision: str | None, backend: str, device: torch.device) -> str:
    """``auto``: fp16 with TensorRT, bf16 with OpenVINO on a CPU with native bf16, else fp32.

    Checks that the backend can run the precision on this device.
    """
    if precision in (None, "auto"):
        if backend == "tensorrt":
            return "fp16"
        return "bf16" if backend == "openvino" and cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    if backend == "torch" and precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError("backend 'onnxruntime' runs fp32 only; use backend 'openvino' or 'torch' for bf16")
    if backend == "openvino" and precision != "fp32":
        caps = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision.upper() not in caps:
            raise ValueError(f"OpenVINO's CPU plugin cannot run {precision} on this CPU (capabilities {list(caps)})")
    if backend == "tensorrt" and precision == "bf16":
        raise ValueError("backend 'tensorrt' builds fp32 or fp16 engines; use precision 'fp16'")
    return precision


def graph_inputs(names: list[str], source: str) -> tuple[str, ...]:
    """The model inputs a graph kept: the exporter drops an input the model never reads
    (``depth`` of a uni-modal RGB model), so only the remaining ones are fed."""
    unknown = set(names) - set(INPUT_NAMES)
    if unknown:
        raise RuntimeError(f"{source}: unexpected model inputs {sorted(unknown)}; export it with m3l_core.export")
    return tuple(n for n in INPUT_NAMES if n in names)


def feed(names: tuple[str, ...], rgb: np.ndarray, depth: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    arrays = dict(zip(INPUT_NAMES, (rgb, depth, present)))
    return {n: arrays[n] for n in names}


class TorchRunner:
    """Eager torch on CPU or CUDA, reduced precision through autocast."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, depth: np.ndarray, present: np.ndarray) -> torch.Tensor:
        dev = self.device
        args = [torch.from_numpy(a).to(dev, non_blocking=True) for a in (rgb, depth, present)]
        if self.precision == "fp32":
            return self.model(*args)["ensemble"]
        with torch.autocast(device_type=dev.type, dtype=TORCH_DTYPES[self.precision]):
            return self.model(*args)["ensemble"].float()


class OnnxRuntimeRunner:
    """ONNX Runtime, CPU provider (CUDA provider when the device is CUDA and it is installed)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str, device: torch.device, num_threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider here; install onnxruntime-gpu")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(onnx_path, opts, providers=providers)
        self.inputs = graph_inputs([i.name for i in self.session.get_inputs()], onnx_path)
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, present: np.ndarray) -> torch.Tensor:
        with self._lock:
            out = self.session.run([OUTPUT_NAME], feed(self.inputs, rgb, depth, present))[0]
        return torch.from_numpy(out)


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, never destroyed.

    OpenVINO's CPU plugin installs its own signal stack (``sigaltstack``) on the thread that
    creates it and unmaps that memory when the plugin is destroyed, even when the destruction runs
    on another thread (Python's garbage collector, an executor thread). The creating thread then
    keeps an alternate signal stack pointing at unmapped memory, and the next signal it handles
    (e.g. the SIGCHLD handler of a torch DataLoader, on a child's exit) kills the process with
    SIGSEGV and no traceback. One Core for the whole process keeps the plugin, and its signal
    stack, alive until exit.
    """
    import openvino as ov

    return ov.Core()


class OpenVinoRunner:
    """OpenVINO on the CPU; precision through INFERENCE_PRECISION_HINT, threads through INFERENCE_NUM_THREADS."""

    name = "openvino"
    OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}

    def __init__(self, model_path: str, precision: str, num_threads: int) -> None:
        config = {"INFERENCE_PRECISION_HINT": self.OV_PRECISION[precision], "INFERENCE_NUM_THREADS": num_threads,
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        blobs = blob_cache_dir()
        core = openvino_core()
        try:
            # OpenVINO's compiled-model cache (per compilation, not on the shared Core): later loads
            # skip most of the compilation.
            cached = {**config, "CACHE_DIR": str(blobs)} if blobs is not None else config
            self.compiled = core.compile_model(core.read_model(model_path), "CPU", cached)
        except RuntimeError as e:
            if blobs is None:
                raise
            # Several processes compiling the same model at once race on the same blob file in
            # OpenVINO's cache ("cannot set permissions: No such file"); the cache is only an
            # optimisation, so compile without it.
            log.warning("OpenVINO compiled-model cache %s failed (%s); compiling without it", blobs,
                        str(e).strip().splitlines()[-1] if str(e).strip() else e)
            self.compiled = core.compile_model(core.read_model(model_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        # A port may carry several tensor names (e.g. "present" and the Cast that reads it).
        self.inputs = graph_inputs([next((n for n in sorted(i.get_names()) if n in INPUT_NAMES), i.get_any_name())
                                    for i in self.compiled.inputs], model_path)
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, present: np.ndarray) -> torch.Tensor:
        with self._lock:
            self.request.infer(feed(self.inputs, rgb, depth, present))
            # The output buffer is reused by the next inference: copy it out under the lock.
            return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def blob_cache_dir() -> Path | None:
    """``<export cache>/openvino_blobs`` if it can be created, else None (no compiled-model cache)."""
    from m3l_core.export import cache_dir

    path = cache_dir() / "openvino_blobs"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "BOOL": torch.bool,
                 "INT32": torch.int32, "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8}


class TensorRTRunner:
    """A serialized TensorRT engine on one CUDA device; I/O are torch CUDA tensors on torch's current stream."""

    name = "tensorrt"

    def __init__(self, engine_path: str, device: torch.device) -> None:
        import tensorrt as trt

        if device.type != "cuda":
            raise RuntimeError("backend 'tensorrt' needs a CUDA device")
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{engine_path}: TensorRT could not deserialize the engine "
                                   "(built with another TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
        self.buffers: dict[str, torch.Tensor] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = _TRT_TO_TORCH[self.engine.get_tensor_dtype(name).name]
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        if OUTPUT_NAME not in self.buffers:
            raise RuntimeError(f"{engine_path}: engine has no '{OUTPUT_NAME}' output; export it with m3l_core.export")
        self.inputs = graph_inputs([n for n in self.buffers if n != OUTPUT_NAME], engine_path)
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, present: np.ndarray) -> torch.Tensor:
        with self._lock, torch.cuda.device(self.device):
            for name, arr in feed(self.inputs, rgb, depth, present).items():
                self.buffers[name].copy_(torch.from_numpy(arr), non_blocking=False)
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            return self.buffers[OUTPUT_NAME].float().clone()


def make_runner(backend: str, *, model: torch.nn.Module | None, artifact: str | None, device: torch.device,
                precision: str, num_threads: int) -> Any:
    """The runner for ``backend``: the torch model itself, or an exported file for the others."""
    if backend == "torch":
        if model is None:
            raise ValueError("backend 'torch' needs a checkpoint (.safetensors), not an exported model")
        return TorchRunner(model, device, precision)
    if artifact is None:
        raise ValueError(f"backend {backend!r} needs an exported model")
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(artifact, device, num_threads)
    if backend == "openvino":
        if device.type != "cpu":
            raise ValueError("backend 'openvino' runs on the CPU here; use device 'cpu'")
        return OpenVinoRunner(artifact, precision, num_threads)
    return TensorRTRunner(artifact, device)
