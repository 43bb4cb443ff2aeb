"""Fine-tuning to another class set: `model.init` with `model.init_reset` (9-class checkpoint -> 22 classes)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from m3l_core.checkpoint import read_metadata
from m3l_core.cli.train import main
from m3l_core.data.folder import ClassInfo, load_classes, save_classes
from m3l_core.model import LinearFusionSegFormer
from m3l_core.train.init_weights import init_from_checkpoint
from train_fixtures import CONFIGS, TINY, m3l_logs_propagate, tiny_config, tiny_data  # noqa: F401  (fixtures)

NEW_CLASSES = [f"class_{i:02d}" for i in range(22)]


def run(config: str, data: Path, out: Path, *sets: str) -> int:
    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--data", str(data), "--out", str(out), "--device", "cpu"]
    return main(args + sum((["--set", s] for s in [*TINY, "eval_every=0", *sets]), []))


@pytest.fixture(scope="module")
def nine_class_checkpoint(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "m3l9"
    assert run("synthetic_m3l", tiny_data, out, "max_iters=2") == 0
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def data22(tiny_data, tmp_path_factory) -> Path:
    """The synthetic frames under a 22-class classes.yaml (ids 0..8 stay valid)."""
    root = tmp_path_factory.mktemp("ft") / "data22"
    shutil.copytree(tiny_data, root)
    save_classes(root / "classes.yaml", ClassInfo(names=NEW_CLASSES))
    return root


def test_a_22_class_model_trains_from_a_9_class_checkpoint(nine_class_checkpoint, data22, tmp_path, capsys,
                                                           caplog, m3l_logs_propagate):
    assert len(read_metadata(nine_class_checkpoint)["class_names"]) == 9
    # Without the option the shapes do not fit, and the error says what to do.
    assert run("synthetic_m3l", data22, tmp_path / "strict", "max_iters=2", f"model.init={nine_class_checkpoint}") == 1
    err = capsys.readouterr().err
    assert f"{nine_class_checkpoint}: does not fit" in err and "model.init_reset=[classifier]" in err

    out = tmp_path / "ft22"
    with caplog.at_level(logging.INFO):
        assert run("synthetic_m3l", data22, out, "max_iters=3", f"model.init={nine_class_checkpoint}",
                   "model.init_reset=[classifier,missing_token]") == 0
    resets = sorted(r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("model.init: reset"))
    assert resets == ["decoder.classifier.bias", "decoder.classifier.weight", "missing_token"]
    meta = read_metadata(out / "model.safetensors")
    assert meta["class_names"] == NEW_CLASSES and meta["model"]["num_classes"] == 22
    assert load_file(str(out / "model.safetensors"))["decoder.classifier.weight"].shape[0] == 22


def test_only_the_reset_parts_start_fresh(nine_class_checkpoint, data22):
    cfg = tiny_config("synthetic_m3l", data22)
    torch.manual_seed(0)
    model = LinearFusionSegFormer(cfg.model.build(22))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = init_from_checkpoint(model, nine_class_checkpoint, reset=("classifier", "missing_token"),
                                 class_names=NEW_CLASSES)
    assert fresh == ["decoder.classifier.bias", "decoder.classifier.weight", "missing_token"]
    ckpt, after = load_file(str(nine_class_checkpoint)), model.state_dict()
    for k, v in after.items():
        if k in fresh:
            assert torch.equal(v, before[k]), k  # left at its fresh initialisation
        else:
            assert torch.equal(v, ckpt[k]), k  # everything else comes from the checkpoint
    assert not torch.equal(ckpt["missing_token"], before["missing_token"])  # the comparison can fail


def test_the_classifier_is_kept_when_the_class_set_is_the_same(nine_class_checkpoint, tiny_data):
    names = load_classes(tiny_data / "classes.yaml").names
    model = LinearFusionSegFormer(tiny_config("synthetic_m3l", tiny_data).model.build(9))
    assert init_from_checkpoint(model, nine_class_checkpoint, reset=("classifier",), class_names=names) == []
    ckpt = load_file(str(nine_class_checkpoint))
    assert torch.equal(model.state_dict()["decoder.classifier.weight"], ckpt["decoder.classifier.weight"])
    # Same count, other names: a different class set, so the classifier starts fresh.
    other = [f"x{i}" for i in range(9)]
    model = LinearFusionSegFormer(tiny_config("synthetic_m3l", tiny_data).model.build(9))
    assert init_from_checkpoint(model, nine_class_checkpoint, reset=("classifier",), class_names=other) == [
        "decoder.classifier.bias", "decoder.classifier.weight"]
