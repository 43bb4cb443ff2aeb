"""Checkpoint validation before allocation (issue 10, item 7).

Every crafted file from the issue must fail with a ``CheckpointError`` that names the
file and the field, before the model is built (``build_model`` is replaced by a trap).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from m3l_core import checkpoint as ckpt_mod
from m3l_core.checkpoint import (
    META_KEY, CheckpointError, load_checkpoint, read_metadata, read_tensor_shapes, save_checkpoint, validate_metadata)
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing

K = 3


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=K, decoder_dim=16))
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    save_checkpoint(path, model, class_names=["a", "b", "c"], preprocessing=Preprocessing(input_size=(32, 32)))
    return path


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a model is allocated."""
    def trap(config):
        raise AssertionError(f"model built for {config}")

    monkeypatch.setattr(ckpt_mod, "build_model", trap)


def craft(good, tmp_path, name, *, meta=None, tensors=None):
    """A copy of ``good`` under ``name`` with its metadata and/or tensors edited in place by callbacks."""
    m = read_metadata(good)
    state = load_file(str(good))
    if meta:
        meta(m)
    if tensors:
        tensors(state)
    path = tmp_path / name
    path.write_bytes(st_save(state, metadata={META_KEY: json.dumps(m)}))
    return path


def expect(path, field, *more):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert path.name in msg and f"'{field}'" in msg, msg
    assert info.value.field == field and info.value.path == str(path)
    for text in more:
        assert text in msg, msg
    return msg


def set_(section, key, value):
    def edit(m):
        (m[section] if section else m)[key] = value
    return edit


@pytest.mark.parametrize("name, edit, field, text", [
    ("huge_input.safetensors", set_("preprocessing", "input_size", [20000, 20000]),
     "preprocessing.input_size", "outside"),
    ("classes_2e6.safetensors", set_("model", "num_classes", 2e6), "model.num_classes", "expected int"),
    ("classes_int_2e6.safetensors", set_("model", "num_classes", 2_000_000), "model.num_classes", "[1, 4096]"),
    ("classes_float.safetensors", set_("model", "num_classes", 9.0), "model.num_classes", "expected int"),
    ("classes_bool.safetensors", set_("model", "num_classes", True), "model.num_classes", "expected int"),
    ("decoder_1e6.safetensors", set_("model", "decoder_dim", 1_000_000), "model.decoder_dim", "outside"),
    ("alpha_nan.safetensors", set_("model", "fusion_alpha", math.nan), "model.fusion_alpha", "expected float"),
    ("backbone.safetensors", set_("model", "backbone", "mit_b9"), "model.backbone", "not one of"),
    ("unknown.safetensors", set_("model", "num_layers", 4), "model.num_layers", "unknown field"),
    ("short_palette.safetensors", set_(None, "palette", [[1, 2, 3]] * (K - 1)), "palette", "2 colours"),
    ("empty_palette.safetensors", set_(None, "palette", []), "palette", "0 colours"),
    ("palette_300.safetensors", set_(None, "palette", [[0, 0, 0], [1, 300, 2], [3, 3, 3]]), "palette[1]", "0..255"),
    ("palette_float.safetensors", set_(None, "palette", [[0, 0, 0.5], [1, 1, 2], [3, 3, 3]]), "palette[0]", "0..255"),
    ("names.safetensors", set_(None, "class_names", ["a", "b"]), "class_names", "2 names"),
    ("names_type.safetensors", set_(None, "class_names", "abc"), "class_names", "list of strings"),
    ("zero_std.safetensors", set_("preprocessing", "rgb_std", [0.2, 0.0, 0.2]), "preprocessing.rgb_std", "> 0"),
    ("std_len.safetensors", set_("preprocessing", "rgb_std", [0.2, 0.2]), "preprocessing.rgb_std", "expected"),
    ("depth_norm.safetensors", set_("preprocessing", "depth_norm", "log"), "preprocessing.depth_norm", "not one of"),
    ("ignore.safetensors", set_("preprocessing", "ignore_index", 1), "preprocessing.ignore_index", "class id"),
    ("no_model.safetensors", lambda m: m.pop("model"), "model", "missing"),
])
def test_bad_metadata_fails_before_the_model_is_built(good, tmp_path, no_build, name, edit, field, text):
    expect(craft(good, tmp_path, name, meta=edit), field, text)


@pytest.mark.parametrize("section, cls", [("model", ModelConfig), ("preprocessing", Preprocessing)])
def test_every_dataclass_field_is_type_checked(good, section, cls):
    """Fields come from the dataclasses: one added there (with a default) is checked without code here."""
    meta = read_metadata(good)
    hints = typing.get_type_hints(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        is_dict = typing.get_origin(hints[f.name]) is dict or hints[f.name] is dict
        bad = [1] if is_dict else {"x": 1}  # the wrong JSON kind for every field
        with pytest.raises(CheckpointError) as info:
            validate_metadata({**meta, section: {**meta[section], f.name: bad}}, source="m.safetensors")
        assert info.value.field == f"{section}.{f.name}", (f.name, str(info.value))
        checked += 1
    assert checked == len(dataclasses.fields(cls)) >= 6


def test_dataclass_value_errors_name_their_field(good):
    meta = read_metadata(good)
    with pytest.raises(CheckpointError) as info:
        validate_metadata({**meta, "preprocessing": {**meta["preprocessing"], "depth_range": [5.0, 1.0]}}, source="m")
    assert info.value.field == "preprocessing.depth_range"


def test_wrong_tensor_shape_is_caught_from_the_header(good, tmp_path, no_build):
    def shrink(state):
        state["decoder.classifier.weight"] = state["decoder.classifier.weight"][:2].clone()

    expect(craft(good, tmp_path, "shape.safetensors", tensors=shrink), "decoder.classifier.weight", "shape [2, 16, 1, 1]")

    def fewer_classes(m):  # consistent metadata for another class count than the weights hold
        m["model"]["num_classes"], m["class_names"], m["palette"] = 2, ["a", "b"], [[0, 0, 0], [1, 1, 1]]

    path = craft(good, tmp_path, "classes.safetensors", meta=fewer_classes)
    msg = expect(path, "decoder.classifier.weight", "needs [2, 16, 1, 1]")
    assert "tensor(s) differ" in msg  # the classifier bias differs too
    assert read_tensor_shapes(good)["decoder.classifier.weight"] == (K, 16, 1, 1)


def test_missing_tensor_named(good, tmp_path, no_build):
    expect(craft(good, tmp_path, "missing.safetensors", tensors=lambda s: s.pop("missing_token")), "missing_token",
           "missing")


def test_non_finite_weights_rejected_with_the_tensor_name(good, tmp_path, no_build):
    def poison(state):
        for k, v in state.items():
            if v.is_floating_point():
                state[k] = torch.full_like(v, math.nan)

    expect(craft(good, tmp_path, "nan.safetensors", tensors=poison), next(iter(sorted(load_file(str(good))))), "NaN/Inf")

    def one_inf(state):
        state["decoder.classifier.bias"] = state["decoder.classifier.bias"].clone()
        state["decoder.classifier.bias"][1] = math.inf

    expect(craft(good, tmp_path, "inf.safetensors", tensors=one_inf), "decoder.classifier.bias", "1 NaN/Inf value(s) of 3")


def test_os_errors_keep_their_reason(good, tmp_path, no_build):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="dir.safetensors: cannot read checkpoint: Is a directory") as info:
        load_checkpoint(folder)
    assert "not found" not in str(info.value)

    locked = tmp_path / "locked" / "model.safetensors"
    locked.parent.mkdir()
    locked.write_bytes(good.read_bytes())
    locked.chmod(0)
    locked.parent.chmod(0o700)
    as_root = os.geteuid() == 0
    try:
        if as_root:  # root reads anything: drop the effective uid to nobody for the attempt
            os.seteuid(65534)
        with pytest.raises(CheckpointError, match="model.safetensors: cannot read checkpoint: Permission denied") as info:
            load_checkpoint(locked)
    finally:
        if as_root:
            os.seteuid(0)
        locked.chmod(0o644)
    assert "not found" not in str(info.value) and "No such file" not in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


def test_valid_checkpoints_load_and_optional_fields_take_their_defaults(good, tmp_path):
    ck = load_checkpoint(good)
    assert ck.class_names == ["a", "b", "c"] and ck.model_config.decoder_dim == 16 and not ck.model.training

    def drop_defaults(m):  # older files without newer fields still load with the dataclass defaults
        m["model"].pop("decoder_dropout")
        m["preprocessing"].pop("depth_range")
        m["preprocessing"]["future_field"] = 1  # preprocessing from a newer writer: ignored, like from_dict

    ck = load_checkpoint(craft(good, tmp_path, "old.safetensors", meta=drop_defaults))
    assert ck.model_config.decoder_dropout == ModelConfig().decoder_dropout
    assert ck.preprocessing.depth_range == Preprocessing().depth_range


def test_validate_metadata_is_usable_on_its_own(good):
    """Exported models carry the same dict; every dataclass field round-trips through the checker."""
    meta = read_metadata(good)
    checked = validate_metadata(meta, source="model.onnx")
    assert checked.model_config.to_dict() == ModelConfig.from_dict(meta["model"]).to_dict()
    assert checked.preprocessing.to_dict() == Preprocessing(**{**meta["preprocessing"]}).to_dict()
    assert checked.palette == meta["palette"] and checked.ignore_index == 255
    full = json.loads(json.dumps({**meta, "model": ModelConfig(backbone="tiny", num_classes=K).to_dict(),
                                  "preprocessing": Preprocessing().to_dict()}))
    validate_metadata(full, source="x")
    with pytest.raises(CheckpointError, match=r"model.onnx: metadata field 'palette\[2\]'") as info:
        validate_metadata({**meta, "palette": [[0, 0, 0], [0, 0, 0], [0, 0, -1]]}, source="model.onnx")
    assert info.value.field == "palette[2]"
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        validate_metadata({**meta, "format": "other"}, source="model.onnx")


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=2, decoder_dim=8))
    with pytest.raises(CheckpointError, match="'class_names'"):
        save_checkpoint(tmp_path / "x.safetensors", model, class_names=["a"])
    with pytest.raises(CheckpointError, match=r"'palette\[1\]'"):
        save_checkpoint(tmp_path / "x.safetensors", model, class_names=["a", "b"], palette=[[0, 0, 0], [0, 0, 256]])
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
