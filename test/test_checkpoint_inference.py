"""Self-describing checkpoints and the Segmenter inference API."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from m3l_core.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from m3l_core.inference import Segmenter
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing, normalize_depth

NAMES = ["floor", "wall", "table", "box", "poster"]


def make_ckpt(path, token=True, depth_norm="minmax"):
    torch.manual_seed(0)
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=5, decoder_dim=32,
                                              missing_token=token))
    with torch.no_grad():  # non-trivial BN statistics
        model.decoder.fuse[1].running_mean.uniform_(-0.1, 0.1)
    pre = Preprocessing(input_size=(32, 48), depth_norm=depth_norm, depth_range=(0.2, 6.0))
    save_checkpoint(path, model, class_names=NAMES, palette=[[i * 40, 255 - i * 40, 7] for i in range(5)],
                    preprocessing=pre, extra={"note": "test"})
    return model.eval()


def scene(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mm = rng.integers(400, 5000, (h, w)).astype(np.uint16)
    mm[:5, :7] = 0  # invalid
    return rgb, mm


def test_round_trip_identical_outputs(tmp_path):
    path = tmp_path / "m.safetensors"
    model = make_ckpt(path)
    ck = load_checkpoint(path)
    assert ck.class_names == NAMES and ck.palette[1] == [40, 215, 7]
    assert ck.preprocessing.input_size == (32, 48) and ck.ignore_index == 255
    assert ck.model_config == model.config and ck.metadata["extra"] == {"note": "test"}
    rgb = torch.randn(2, 3, 32, 48)
    depth = torch.randn(2, 1, 32, 48)
    present = torch.tensor([[True, True], [True, False]])
    with torch.no_grad():
        a, b = model(rgb, depth, present), ck.model(rgb, depth, present)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not ck.model.training


def test_checkpoint_is_plain_safetensors_without_pickle(tmp_path):
    path = tmp_path / "m.safetensors"
    make_ckpt(path)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert "missing_token" in f.keys()
    assert read_metadata(path)["model"]["backbone"] == "tiny"


def test_truncated_foreign_and_missing_files_name_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    make_ckpt(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_checkpoint(trunc)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.safetensors.*not an M3L"):
        load_checkpoint(foreign)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    make_ckpt(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        make_ckpt(path, token=False)
    assert path.read_bytes() == before  # old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files left


def test_segmenter_mm_and_metres_agree(tmp_path):
    path = tmp_path / "m.safetensors"
    make_ckpt(path)
    seg = Segmenter.from_checkpoint(path, device="cpu")
    rgb, mm = scene()
    metres = mm.astype(np.float32) / 1000.0
    metres[mm == 0] = np.nan
    metres[0, 20] = np.inf  # also invalid
    mm2 = mm.copy()
    mm2[0, 20] = 0
    a = seg.predict(rgb=rgb, depth=mm2)
    b = seg.predict(rgb=rgb, depth=metres)
    assert a.shape == (60, 80) and a.dtype == np.int64
    assert np.array_equal(a, b)
    labels, conf = seg.predict(rgb=rgb, depth=mm2, return_confidence=True)
    assert np.array_equal(labels, a) and conf.shape == (60, 80)
    assert np.all((conf > 0) & (conf <= 1))


@pytest.mark.parametrize("token", [True, False])
def test_missing_input_takes_the_missing_modality_path(tmp_path, token):
    path = tmp_path / "m.safetensors"
    model = make_ckpt(path, token=token)
    seg = Segmenter.from_checkpoint(path)
    rgb, mm = scene(h=32, w=48)
    from m3l_core.preprocess import normalize_rgb
    x = torch.from_numpy(normalize_rgb(rgb, seg.preprocessing))[None]
    with torch.no_grad():
        ref = model(x, torch.randn(1, 1, 32, 48), torch.tensor([[True, False]]))["ensemble"].argmax(1)[0]
    assert np.array_equal(seg.predict(rgb=rgb), ref.numpy())
    depth_only = seg.predict(depth=mm)
    assert depth_only.shape == (32, 48)


def test_all_invalid_depth_never_nan(tmp_path):
    path = tmp_path / "m.safetensors"
    make_ckpt(path)
    seg = Segmenter.from_checkpoint(path)
    for depth in (np.zeros((40, 40), np.uint16), np.full((40, 40), np.nan, np.float32),
                  np.full((40, 40), 2.0, np.float32)):
        assert np.isfinite(normalize_depth(depth, seg.preprocessing)).all()
        logits = seg.logits(depth=depth)
        assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="neither"):
        seg.predict()


def test_metric_depth_normalisation_is_recorded(tmp_path):
    path = tmp_path / "m.safetensors"
    make_ckpt(path, depth_norm="metric")
    seg = Segmenter.from_checkpoint(path)
    assert seg.preprocessing.depth_norm == "metric" and seg.preprocessing.depth_range == (0.2, 6.0)
    d = normalize_depth(np.array([[200, 6000, 3100, 0]], np.uint16), seg.preprocessing)
    assert np.allclose(d, [[[0.0, 1.0, 0.5, 0.0]]])


def test_bf16_on_cpu_agrees_mostly_and_fp16_needs_cuda(tmp_path):
    path = tmp_path / "m.safetensors"
    make_ckpt(path)
    rgb, mm = scene(h=32, w=48)
    a = Segmenter.from_checkpoint(path).predict(rgb=rgb, depth=mm)
    b = Segmenter.from_checkpoint(path, precision="bf16").predict(rgb=rgb, depth=mm)
    assert (a == b).mean() > 0.9
    with pytest.raises(ValueError, match="fp16"):
        Segmenter.from_checkpoint(path, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        Segmenter.from_checkpoint(path, precision="int8")


def test_mismatched_rgb_and_depth_sizes_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    make_ckpt(path)
    seg = Segmenter.from_checkpoint(path)
    with pytest.raises(ValueError, match="depth"):
        seg.predict(rgb=np.zeros((10, 12, 3), np.uint8), depth=np.zeros((11, 12), np.uint16))


def test_written_checkpoint_has_the_umask_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    old = os.umask(0o022)
    try:
        make_ckpt(path)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
