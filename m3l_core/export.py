"""Export a checkpoint to ONNX, OpenVINO IR or a TensorRT engine, with its metadata inside.

    python -m m3l_core.export model.safetensors --format onnx --out model.onnx
    python -m m3l_core.export model.safetensors --format openvino --out model.xml
    python -m m3l_core.export model.safetensors --format tensorrt --precision fp16 --out model.engine

The graph is the model's forward at the checkpoint's input size with three inputs,
``rgb (1,3,H,W)``, ``depth (1,1,H,W)`` float32 and ``present (1,2)`` bool, so one file serves
RGB-D, RGB-only and depth-only. The output ``logits (1,C,H,W)`` are the ensemble logits at the
input size (the model's own upsampling, with its ``align_corners``). The checkpoint metadata
(model config, class names, palette, preprocessing) travels as ONNX ``metadata_props`` /
OpenVINO ``rt_info`` under ``m3l``, and for TensorRT in a sidecar ``<engine>.json``, so
``Segmenter.from_checkpoint(exported_file)`` needs nothing else. Exit codes: 0 ok, 1 failed
export or unreadable checkpoint, 2 usage error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from m3l_core.backends import ENGINE_SUFFIXES, INPUT_NAMES, META_KEY, OUTPUT_NAME, artifact_kind
from m3l_core.checkpoint import Checkpoint, CheckpointError, atomic_write_bytes, load_checkpoint
from m3l_core.cli.common import run_guarded

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "tensorrt")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}
OPSET = 18
EXPORT_VERSION = 1  # bump when the exported graph changes; part of the cache key


class ExportError(RuntimeError):
    """An export failed; the message names the file and the step."""


class _EnsembleLogits(torch.nn.Module):
    """The exported graph: presence mask in, ensemble logits out (branch logits are pruned)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.model(rgb, depth, present)["ensemble"]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_metadata(ckpt: Checkpoint, fmt: str, precision: str) -> dict[str, Any]:
    """The checkpoint metadata plus an ``export`` record (format, precision, source file and hash)."""
    meta = dict(ckpt.metadata)
    meta["export"] = {"format": fmt, "precision": precision, "source": Path(ckpt.path).name,
                      "source_sha256": file_sha256(ckpt.path) if ckpt.path and os.path.exists(ckpt.path) else None,
                      "input_names": list(INPUT_NAMES), "output_name": OUTPUT_NAME, "opset": OPSET,
                      "torch": torch.__version__, "export_version": EXPORT_VERSION}
    return meta


def _onnx_bytes(ckpt: Checkpoint, meta: dict[str, Any]) -> bytes:
    """Trace the model with torch's TorchScript ONNX exporter (the dynamo one needs onnxscript)."""
    import onnx

    h, w = ckpt.preprocessing.input_size
    model = _EnsembleLogits(ckpt.model.to("cpu").eval())
    example = (torch.zeros(1, 3, h, w), torch.zeros(1, 1, h, w), torch.ones(1, 2, dtype=torch.bool))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for the shape checks, which are static here
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, example, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
        proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(ckpt: Checkpoint, out: str | os.PathLike) -> Path:
    out = Path(out)
    atomic_write_bytes(out, _onnx_bytes(ckpt, export_metadata(ckpt, "onnx", "fp32")))
    return out


def export_openvino(ckpt: Checkpoint, out: str | os.PathLike, precision: str = "fp32") -> Path:
    """OpenVINO IR (.xml + .bin). Weights are stored fp16 for ``fp16``; bf16/fp32 is chosen when compiling."""
    import openvino as ov

    out = Path(out)
    meta = export_metadata(ckpt, "openvino", precision)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(_onnx_bytes(ckpt, meta))
        # The runtime's ONNX reader, not ov.convert_model: the converter (OVC) starts OpenVINO's
        # telemetry, a child process that posts usage data to the network unless opted out.
        from m3l_core.backends import openvino_core

        model = openvino_core().read_model(str(src))
    model.set_rt_info(json.dumps(meta), [META_KEY])
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write both files under temporary names, then rename: a reader never sees a half IR.
    tmp_xml = out.with_name(f".{out.stem}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=precision == "fp16")
        os.replace(tmp_xml.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(tmp_xml, out)
    finally:
        for p in (tmp_xml, tmp_xml.with_suffix(".bin")):
            if p.exists():
                p.unlink()
    return out


def export_tensorrt(ckpt: Checkpoint, out: str | os.PathLike, precision: str = "fp16",
                    workspace_gb: float = 2.0) -> Path:
    """A TensorRT engine through TensorRT's ONNX parser; metadata in ``<out>.json``. Needs CUDA."""
    import tensorrt as trt

    if precision not in ("fp16", "fp32"):
        raise ExportError(f"TensorRT engines are fp16 or fp32 here, not {precision}")
    if not torch.cuda.is_available():
        raise ExportError("building a TensorRT engine needs a CUDA GPU")
    out = Path(out)
    meta = export_metadata(ckpt, "tensorrt", precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(_onnx_bytes(ckpt, meta)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError("TensorRT failed to build the engine (see its log above)")
    meta["export"]["tensorrt"] = trt.__version__
    meta["export"]["gpu"] = torch.cuda.get_device_name()
    atomic_write_bytes(sidecar(out), json.dumps(meta, indent=1).encode())
    atomic_write_bytes(out, bytes(engine))
    return out


def sidecar(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``: the engine's metadata."""
    return Path(f"{engine_path}.json")


def export(ckpt: Checkpoint, fmt: str, out: str | os.PathLike, precision: str = "fp32") -> Path:
    if fmt == "onnx":
        if precision != "fp32":
            raise ExportError("ONNX is exported in fp32; choose bf16/fp16 when loading (OpenVINO) or use "
                              "--format openvino/tensorrt")
        return export_onnx(ckpt, out)
    if fmt == "openvino":
        return export_openvino(ckpt, out, precision)
    if fmt == "tensorrt":
        return export_tensorrt(ckpt, out, precision)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def read_artifact_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The embedded checkpoint metadata of an exported file (not yet validated)."""
    path = Path(path)
    kind = artifact_kind(path)
    try:
        if kind == "onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            raw = props.get(META_KEY)
        elif kind == "openvino":
            from m3l_core.backends import openvino_core

            model = openvino_core().read_model(str(path))
            raw = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else None
        elif kind == "tensorrt":
            meta_path = sidecar(path)
            if not meta_path.exists():
                raise CheckpointError(f"{path}: TensorRT engine without its metadata file {meta_path.name}", path=str(path))
            raw = meta_path.read_text()
        else:
            raise CheckpointError(f"{path}: not an exported model (.onnx, .xml, {'/'.join(ENGINE_SUFFIXES)})",
                                  path=str(path))
    except CheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"exported model not found: {path} ({e.strerror or e})", path=str(path)) from e
    except Exception as e:  # each library raises its own parse errors
        raise CheckpointError(f"{path}: cannot read the exported model ({type(e).__name__}: {e})", path=str(path)) from e
    if raw is None:
        raise CheckpointError(f"{path}: no '{META_KEY}' metadata; export it with python -m m3l_core.export",
                              path=str(path))
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt '{META_KEY}' metadata ({e})", path=str(path)) from e


def cache_dir() -> Path:
    """Where converted checkpoints are kept: ``$M3L_CACHE_DIR`` or ``~/.cache/m3l_ros/backends``."""
    return Path(os.environ.get("M3L_CACHE_DIR") or Path.home() / ".cache" / "m3l_ros" / "backends")


def cached_export(checkpoint: str | os.PathLike, fmt: str, precision: str = "fp32") -> Path:
    """The exported file for a checkpoint file, converted once and then reused.

    Keyed by the checkpoint's SHA-256, the format, torch's version and ``EXPORT_VERSION``,
    so a changed checkpoint or exporter never reuses a stale file; the checkpoint's weights are
    loaded only on a miss. Falls back to a private temporary directory when the cache is not
    writable.
    """
    checkpoint = Path(checkpoint)
    key = f"{file_sha256(checkpoint)[:20]}-v{EXPORT_VERSION}-torch{torch.__version__.split('+')[0]}"
    store = "fp16" if fmt == "openvino" and precision == "fp16" else ("fp32" if fmt != "tensorrt" else precision)
    name = f"{checkpoint.stem}-{key}-{store}{SUFFIX[fmt]}"
    for folder in (cache_dir(), None):
        try:
            if folder is None:
                folder = Path(tempfile.mkdtemp(prefix="m3l_export_"))
            path = folder / name
            if path.exists() and (fmt != "tensorrt" or sidecar(path).exists()):
                log.info("using cached %s model %s", fmt, path)
                return path
            t0 = time.perf_counter()
            export(load_checkpoint(checkpoint), fmt, path, store)
            log.info("converted %s to %s in %.1f s (cached as %s)", checkpoint.name, fmt,
                     time.perf_counter() - t0, path)
            return path
        except PermissionError as e:
            log.warning("cannot write the export cache %s (%s); converting into a temporary directory", folder, e)
    raise AssertionError("unreachable")


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m3l_core.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="an M3L .safetensors checkpoint")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16"),
                    help="onnx: fp32; openvino: fp32|bf16 (compute) or fp16 (weights stored fp16); "
                         "tensorrt: fp16 (default) or fp32")
    ap.add_argument("--out", default=None, help="output file (default: next to the checkpoint)")
    try:
        ns = ap.parse_args(args)
    except SystemExit as e:
        return int(e.code or 0)
    precision = ns.precision or ("fp16" if ns.format == "tensorrt" else "fp32")
    if (ns.format, precision) in (("onnx", "fp16"), ("onnx", "bf16"), ("tensorrt", "bf16")):
        print(f"error: --format {ns.format} does not support --precision {precision}", file=sys.stderr)
        return 2
    out = Path(ns.out) if ns.out else Path(ns.checkpoint).with_suffix(SUFFIX[ns.format])
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        ckpt = load_checkpoint(ns.checkpoint)
        t0 = time.perf_counter()
        export(ckpt, ns.format, out, precision)
        h, w = ckpt.preprocessing.input_size
        print(f"wrote {out} ({ns.format}, {precision}, input {h}x{w}, {len(ckpt.class_names)} classes) "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0

    return run_guarded(body, failure=(CheckpointError, ExportError, ImportError, OSError, RuntimeError, ValueError),
                       interrupted=None)


if __name__ == "__main__":
    sys.exit(main())
