"""Export and the inference backends: same logits, same labels, self-describing files, one code path."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from m3l_core.backends import choose_backend, resolve_precision
from m3l_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from m3l_core.export import main as export_main, read_artifact_metadata, sidecar
from m3l_core.inference import Segmenter, labels_from_logits
from m3l_core.model import LinearFusionSegFormer, ModelConfig, upsample_logits
from m3l_core.preprocess import Preprocessing
from m3l_core.vocab import CONDITION_PRESENCE

NAMES = ["floor", "wall", "table", "box", "poster"]
PALETTE = [[i * 40, 255 - i * 40, 7] for i in range(5)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Conversions of this test's checkpoints go to a private cache, never ~/.cache."""
    monkeypatch.setenv("M3L_CACHE_DIR", str(tmp_path / "cache"))


class LogRecords(logging.Handler):
    """Records of the named loggers, attached directly: launch_testing's logger class turns propagation off."""

    def __init__(self, *names):
        super().__init__(logging.DEBUG)
        self.loggers = [logging.getLogger(n) for n in names]
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.lines)

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.addHandler(self)
            lg.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.removeHandler(self)
            lg.setLevel(level)


LOGGERS = ("m3l_core.inference", "m3l_core.export")


def make_ckpt(path, modalities=("rgb", "depth"), align_corners=False):
    torch.manual_seed(0)
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=5, decoder_dim=32, modalities=modalities,
                                              missing_token=len(modalities) == 2, align_corners=align_corners))
    with torch.no_grad():  # non-trivial BN statistics
        model.decoder.fuse[1].running_mean.uniform_(-0.1, 0.1)
    save_checkpoint(path, model.eval(), class_names=NAMES, palette=PALETTE,
                    preprocessing=Preprocessing(input_size=(32, 48)))
    return path


def scene(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mm = rng.integers(400, 5000, (h, w)).astype(np.uint16)
    mm[:5, :7] = 0
    return rgb, mm


def inputs_for(condition, rgb, mm):
    has_rgb, has_depth = CONDITION_PRESENCE[condition]
    return (rgb if has_rgb else None), (mm if has_depth else None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One checkpoint exported to ONNX and OpenVINO through the CLI."""
    d = tmp_path_factory.mktemp("export")
    ckpt = make_ckpt(d / "m.safetensors")
    for fmt, out in (("onnx", "m.onnx"), ("openvino", "m.xml")):
        assert export_main([str(ckpt), "--format", fmt, "--out", str(d / out)]) == 0
    return d


@pytest.mark.parametrize("path,backend", [("m.onnx", "onnxruntime"), ("m.onnx", "openvino"), ("m.xml", "openvino")])
def test_exported_fp32_logits_match_torch_in_every_condition(exported, path, backend):
    ref = Segmenter.from_checkpoint(exported / "m.safetensors", device="cpu", backend="torch")
    seg = Segmenter.from_checkpoint(exported / path, device="cpu", backend=backend)
    assert seg.backend == backend and seg.precision == "fp32"
    rgb, mm = scene()
    for condition in CONDITION_PRESENCE:
        r, d = inputs_for(condition, rgb, mm)
        a, size = ref.model_logits(r, d)
        b, _ = seg.model_logits(r, d)
        assert size == (60, 80) and a.shape == b.shape == (1, 5, 32, 48)
        assert float((a - b).abs().max()) < 1e-4, condition
        assert np.array_equal(ref.predict(r, d), seg.predict(r, d)), condition


def test_exported_model_carries_the_checkpoint_metadata(exported):
    ck = load_checkpoint(exported / "m.safetensors")
    for name in ("m.onnx", "m.xml"):
        meta = read_artifact_metadata(exported / name)
        assert meta["model"] == ck.metadata["model"] and meta["class_names"] == NAMES
        assert meta["palette"] == PALETTE and meta["preprocessing"]["input_size"] == [32, 48]
        assert meta["export"]["input_names"] == ["rgb", "depth", "present"]
        seg = Segmenter.from_checkpoint(exported / name, device="cpu")  # nothing but the file
        assert seg.class_names == NAMES and seg.num_classes == 5 and seg.input_size == (32, 48)
        assert seg.modalities == ("rgb", "depth") and seg.palette[1].tolist() == [40, 215, 7]
        assert seg.colorize(np.array([[1, 9]])).tolist() == [[[40, 215, 7], [0, 0, 0]]]
        with pytest.raises(AttributeError, match="no torch model"):
            seg.model


def test_export_cli_usage_and_failures(tmp_path, exported, capsys):
    ckpt = str(exported / "m.safetensors")
    assert export_main([ckpt, "--format", "onnx", "--precision", "bf16", "--out", str(tmp_path / "x.onnx")]) == 2
    assert export_main([ckpt, "--format", "caffe"]) == 2
    assert export_main([str(tmp_path / "missing.safetensors"), "--format", "onnx"]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_files_without_metadata_are_refused_naming_the_file(tmp_path, exported):
    import onnx

    proto = onnx.load(str(exported / "m.onnx"))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(CheckpointError, match="bare.onnx.*no 'm3l' metadata"):
        Segmenter.from_checkpoint(bare, device="cpu")
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(CheckpointError, match="x.engine.json"):
        read_artifact_metadata(engine)


def test_uni_modal_export_drops_the_unused_input_and_still_runs(tmp_path):
    ckpt = make_ckpt(tmp_path / "rgb.safetensors", modalities=("rgb",))
    ref = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch")
    rgb, _ = scene()
    for backend in ("onnxruntime", "openvino"):
        seg = Segmenter.from_checkpoint(ckpt, device="cpu", backend=backend)
        assert "depth" not in seg._runner.inputs
        assert float((ref.model_logits(rgb)[0] - seg.model_logits(rgb)[0]).abs().max()) < 1e-4


def test_auto_backend_and_checkpoint_conversion_is_cached(tmp_path):
    ckpt = make_ckpt(tmp_path / "m.safetensors")
    with LogRecords(*LOGGERS) as logs:
        seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    assert seg.backend == "openvino"  # installed here; auto prefers it on the CPU
    assert "backend auto -> openvino" in logs.text and "model input 32x48" in logs.text
    assert "converted m.safetensors to openvino" in logs.text
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(n.endswith(".xml") for n in cached)
    with LogRecords(*LOGGERS) as logs:
        Segmenter.from_checkpoint(ckpt, device="cpu")
    assert "using cached openvino model" in logs.text and "converted" not in logs.text
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("fn,args,expected", [
    (choose_backend, ("auto", "openvino", CPU), "openvino"),
    (choose_backend, ("auto", "onnx", CPU), "openvino"),  # OpenVINO is installed here and preferred on CPUs
    (choose_backend, ("onnxruntime", "onnx", CPU), "onnxruntime"),
    (choose_backend, ("onnxruntime", "openvino", CPU), ValueError("cannot run a openvino file")),
    (choose_backend, ("tflite", "checkpoint", CPU), ValueError("backend must be")),
    (resolve_precision, ("auto", "tensorrt", CUDA), "fp16"),
    (resolve_precision, ("auto", "torch", CPU), "fp32"),
    (resolve_precision, ("bf16", "onnxruntime", CPU), ValueError("fp32 only")),
    (resolve_precision, ("fp16", "torch", CPU), ValueError("needs a CUDA device")),
])
def test_backend_and_precision_rules(fn, args, expected):
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=str(expected)):
            fn(*args)
    else:
        assert fn(*args) == expected


def test_auto_precision_is_bf16_only_for_openvino_on_a_bf16_cpu(exported):
    from m3l_core.backends import cpu_has_bf16

    expected = "bf16" if cpu_has_bf16() else "fp32"
    assert resolve_precision("auto", "openvino", CPU) == expected
    assert Segmenter.from_checkpoint(exported / "m.xml", device="cpu", precision="auto").precision == expected
    assert resolve_precision(None, "onnxruntime", CPU) == "fp32"


def test_auto_on_cuda_prefers_tensorrt_when_installed():
    assert choose_backend("auto", "checkpoint", CUDA) == ("tensorrt" if _installed("tensorrt") else "torch")
    assert choose_backend("auto", "onnx", CUDA) == "onnxruntime"
    if _installed("tensorrt"):
        assert choose_backend("auto", "tensorrt", CUDA) == "tensorrt"
    else:
        with pytest.raises(RuntimeError, match="no installed backend can run a tensorrt file"):
            choose_backend("auto", "tensorrt", CUDA)


def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("budget", [1, 4 * 50 * 70 * 2, 1 << 30])  # one class per group, 2 per group, all at once
def test_bounded_labels_equal_full_upsampling_then_argmax(align_corners, budget):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 7, 12, 16, generator=g)
    logits[:, 4] = logits[:, 2]  # exact ties: the first class wins, as in argmax
    logits[..., :3, :3] = 0.5  # all classes equal in a corner
    full = upsample_logits(logits, (50, 70), align_corners=align_corners)[0]
    labels, conf = labels_from_logits(logits, (50, 70), align_corners=align_corners, return_confidence=True,
                                      budget_bytes=budget)
    assert np.array_equal(labels, full.argmax(0).numpy())
    assert labels.dtype == np.int64 and conf.dtype == np.float32
    assert np.allclose(conf, full.softmax(0).max(0).values.numpy(), atol=1e-6)
    assert np.array_equal(labels_from_logits(logits, (50, 70), align_corners=align_corners, budget_bytes=budget),
                          labels)


def test_segmenter_uses_the_models_align_corners(tmp_path):
    ckpt = make_ckpt(tmp_path / "ac.safetensors", align_corners=True)
    seg = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch")
    rgb, mm = scene(h=45, w=70)
    out, size = seg.model_logits(rgb, mm)
    ref = upsample_logits(out, size, align_corners=True)[0].argmax(0).numpy()
    assert np.array_equal(seg.predict(rgb, mm), ref)
    full = seg.logits(rgb, mm)
    assert torch.equal(full, upsample_logits(out, size, align_corners=True))
    assert not torch.allclose(full, upsample_logits(out, size, align_corners=False))


def test_depth_rule_65535_and_max_depth_and_units_warning_once(tmp_path):
    ckpt = make_ckpt(tmp_path / "m.safetensors")
    seg = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch")
    rgb, mm = scene()
    holes = mm.copy()
    holes[20:30, 10:40] = 65535
    zeroed = holes.copy()
    zeroed[holes == 65535] = 0
    assert np.array_equal(seg.predict(rgb, holes), seg.predict(rgb, zeroed))
    far = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch", max_depth=2.0)
    clipped = mm.copy()
    clipped[mm > 2000] = 0
    assert np.array_equal(far.predict(rgb, mm), seg.predict(rgb, clipped))
    tenth_mm = (mm.astype(np.uint32) * 10).clip(0, 65534).astype(np.uint16)  # 0.1 mm units passed as mm
    tenth_mm[:, :] = np.maximum(tenth_mm, 30000)
    with LogRecords(*LOGGERS) as logs:
        seg.predict(rgb, tenth_mm)
        seg.predict(rgb, tenth_mm)
    assert logs.text.count("median valid depth") == 1


def test_bf16_variants_mostly_agree_with_fp32(exported):
    rgb, mm = scene(h=32, w=48)
    ref = Segmenter.from_checkpoint(exported / "m.safetensors", device="cpu", backend="torch").predict(rgb, mm)
    for backend, path in (("torch", "m.safetensors"), ("openvino", "m.xml")):
        try:
            seg = Segmenter.from_checkpoint(exported / path, device="cpu", backend=backend, precision="bf16")
        except ValueError as e:  # a CPU without bf16 support in OpenVINO
            pytest.skip(str(e))
        assert seg.precision == "bf16"
        assert (seg.predict(rgb, mm) == ref).mean() > 0.9  # random tiny weights: logits are close together


@pytest.mark.timeout(600)
def test_tensorrt_engine_matches_torch(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (requirements/gpu.txt)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    ckpt = make_ckpt(tmp_path / "m.safetensors")
    engine = tmp_path / "m.engine"
    assert export_main([str(ckpt), "--format", "tensorrt", "--out", str(engine)]) == 0
    assert json.loads(sidecar(engine).read_text())["class_names"] == NAMES
    ref = Segmenter.from_checkpoint(ckpt, device="cuda", backend="torch")
    seg = Segmenter.from_checkpoint(engine, device="cuda")
    assert seg.backend == "tensorrt" and seg.precision == "fp16"
    rgb, mm = scene()
    for condition in CONDITION_PRESENCE:
        r, d = inputs_for(condition, rgb, mm)
        assert float((ref.model_logits(r, d)[0] - seg.model_logits(r, d)[0]).abs().max()) < 0.05
        assert (ref.predict(r, d) == seg.predict(r, d)).mean() > 0.95
