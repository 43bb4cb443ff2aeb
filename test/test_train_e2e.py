"""End-to-end training on a tiny synthetic folder dataset: every framework, loss decrease, resume, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m3l_core.checkpoint import read_metadata
from m3l_core.data.folder import load_classes
from m3l_core.data.transforms import TrainTransform, collate
from m3l_core.inference import Segmenter
from m3l_core.model import LinearFusionSegFormer
from m3l_core.train.config import load_config
from m3l_core.train.cps import CPSPair
from m3l_core.train.ema import EMATeacher
from m3l_core.train.masking import plan_batch
from m3l_core.train.optim import build_optimizer
from m3l_core.cli.train import main
from m3l_core.train.init_weights import init_from_checkpoint
from m3l_core.train.train_data import open_split
from m3l_core.train.trainer import train, train_step
from train_fixtures import (CONFIGS, TINY, m3l_logs_propagate, tiny_config, tiny_data,  # noqa: F401  (fixtures)
                            write_paper_dataset)

FRAMEWORK_CONFIGS = {
    "supervised": "synthetic_sup",
    "modality_dropout": "synthetic_md",
    "mean_teacher": "synthetic_mt",
    "m3l": "synthetic_m3l",
    "cps": "synthetic_cps",
}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_cli(name: str, data: Path, out: Path, *sets: str) -> int:
    args = ["--config", str(CONFIGS / f"{name}.yaml"), "--data", str(data), "--out", str(out), "--device", "cpu"]
    for s in [*TINY, *sets]:
        args += ["--set", s]
    return main(args)


@pytest.mark.parametrize("name", [*FRAMEWORK_CONFIGS.values(), "synthetic_uni_depth"])
def test_framework_runs_end_to_end_and_writes_a_loadable_checkpoint(name, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert run_cli(name, tiny_data, out, "max_iters=3", "eval_every=3", "save_every=2") == 0
    for f in ("model.safetensors", "last.safetensors", "config.yaml", "metrics.jsonl", "train.log",
              "state/manifest.json"):
        assert (out / f).is_file(), f
    cfg = load_config(out / "config.yaml")  # the resolved config reloads as is
    assert cfg.max_iters == 3 and cfg.data.root == str(tiny_data)

    meta = read_metadata(out / "model.safetensors")
    classes = load_classes(tiny_data / "classes.yaml")
    assert meta["class_names"] == classes.names
    assert meta["extra"]["framework"] == cfg.framework and meta["extra"]["step"] == 3
    assert meta["preprocessing"]["input_size"] == [32, 32]
    assert meta["preprocessing"]["extra"] == {"train_crop_size": [32, 32]}
    assert meta["extra"]["val_metric"] == cfg.resolved_val_metric()

    seg = Segmenter.from_checkpoint(out / "model.safetensors")
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    depth = np.full((40, 50), 1500, np.uint16)
    for inputs in ({"rgb": rgb, "depth": depth}, {"rgb": rgb}, {"depth": depth}):
        pred = seg.predict(**inputs)
        assert pred.shape == (40, 50) and pred.min() >= 0 and pred.max() < classes.num_classes
    assert (seg.model.missing_token is not None) == cfg.model.missing_token

    recs = records(out)
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in train_recs)
    assert train_recs[0]["lr"] == pytest.approx(cfg.optim.lr)
    assert train_recs[0]["lr_decoder"] == pytest.approx(3 * cfg.optim.lr)
    if cfg.uses_pseudo:
        assert all(r["loss_pseudo"] > 0 for r in train_recs)
    else:
        assert all(r["loss_pseudo"] == 0 for r in train_recs)
    (val,) = [r for r in recs if "val" in r]
    assert val["step"] == 3 and val["best"] and val["metric"] == cfg.resolved_val_metric()
    expected = {"depth"} if name == "synthetic_uni_depth" else {"rgbd", "rgb", "depth"}
    assert {c for c in ("rgbd", "rgb", "depth") if val["val"][c] is not None} == expected


@pytest.mark.parametrize("framework", list(FRAMEWORK_CONFIGS))
def test_loss_falls_on_a_fixed_batch(framework, tiny_data):
    cfg = tiny_config(FRAMEWORK_CONFIGS[framework], tiny_data)
    labeled = open_split(cfg.data, "train_labeled", labeled=True)
    unlabeled = open_split(cfg.data, "train_unlabeled", labeled=False)
    tf = TrainTransform(cfg.data.crop_size, cfg.preprocessing(), scales=(1.0,), flip=False)
    samples = [tf(labeled[i], np.random.default_rng(i)) for i in range(2)]
    n_unl = 2 if cfg.uses_unlabeled else 0
    samples += [tf({**unlabeled[i], "label": None}, np.random.default_rng(10 + i)) for i in range(n_unl)]
    batch = collate(samples)
    torch.manual_seed(0)
    model_cfg = cfg.model.build(labeled.classes.num_classes)
    model = LinearFusionSegFormer(model_cfg)
    if framework == "cps":  # two networks, the second initialised differently
        model = CPSPair(model, LinearFusionSegFormer(model_cfg))
    teacher = EMATeacher(model) if cfg.uses_teacher else None
    opt = build_optimizer(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(30):
        plan = plan_batch(cfg.framework, 2, n_unl, gen)
        out = train_step(model, teacher, batch, plan, opt, cfg=cfg, heads=model_cfg.heads, device=torch.device("cpu"))
        if teacher is not None:
            teacher.update(model, step)
        losses.append([out["loss"].item(), out["sup"].item()])
    first, last = np.mean(losses[:5], 0), np.mean(losses[-5:], 0)
    assert last[0] < 0.75 * first[0], (framework, first, last)
    assert last[1] < 0.8 * first[1], (framework, first, last)  # the ground-truth part falls too


def test_interrupted_and_resumed_run_ends_with_identical_weights(tiny_data, tmp_path):
    sets = ["max_iters=6", "eval_every=3", "save_every=4", "model.drop_path_rate=0.1", "model.decoder_dropout=0.1"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run_cli("synthetic_m3l", tiny_data, full, *sets) == 0
    # Stop after 2 steps, resume and stop after 3 more (at 5, between saves), resume to the end.
    assert main(["--config", str(CONFIGS / "synthetic_m3l.yaml"), "--data", str(tiny_data), "--out", str(parts),
                 "--device", "cpu", "--stop-after", "2", *sum((["--set", s] for s in [*TINY, *sets]), [])]) == 0
    manifest = json.loads((parts / "state" / "manifest.json").read_text())
    assert manifest["step"] == 2 and not (parts / "last.safetensors").exists()
    assert main(["--resume", str(parts), "--stop-after", "3"]) == 0
    assert json.loads((parts / "state" / "manifest.json").read_text())["step"] == 5
    assert main(["--resume", str(parts)]) == 0

    def state(run: Path) -> dict[str, torch.Tensor]:
        m = json.loads((run / "state" / "manifest.json").read_text())
        assert m["step"] == 6
        tensors = {f"{k}.{n}": t for k in ("student", "teacher")
                   for n, t in load_file(str(run / "state" / m["files"][k])).items()}
        opt = torch.load(run / "state" / m["files"]["optimizer"], weights_only=True)["optimizer"]
        tensors.update({f"opt.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()})
        return tensors

    a, b = state(full), state(parts)
    assert a.keys() == b.keys()
    diff = {k for k in a if not torch.equal(a[k], b[k])}
    assert not diff, sorted(diff)[:5]
    for f in ("model.safetensors", "last.safetensors"):
        wa, wb = load_file(str(full / f)), load_file(str(parts / f))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f
    strip = [{k: v for k, v in r.items() if k != "sec_per_it"} for r in records(full)]
    assert strip == [{k: v for k, v in r.items() if k != "sec_per_it"} for r in records(parts)]
    # A sanity check that the comparison can fail: training moved the weights.
    init = LinearFusionSegFormer(load_config(full / "config.yaml").model.build(9)).state_dict()
    assert not torch.equal(init["decoder.classifier.weight"], a["student.decoder.classifier.weight"])


def test_signal_style_stop_via_api_is_resumable(tiny_data, tmp_path):
    cfg = tiny_config("synthetic_sup", tiny_data, "max_iters=4", "eval_every=0", "save_every=0")
    res = train(cfg, tmp_path / "run", device="cpu", stop_after=1)
    assert (res.step, res.finished) == (1, False)
    res = train(cfg, tmp_path / "run", device="cpu", resume=True)
    assert (res.step, res.finished) == (4, True)
    # No validation: model.safetensors holds the final weights.
    assert read_metadata(tmp_path / "run" / "model.safetensors")["extra"]["val"] is None
    # Resuming a finished run is a no-op.
    assert train(cfg, tmp_path / "run", device="cpu", resume=True).step == 4


def test_init_from_a_supervised_checkpoint(tiny_data, tmp_path, capsys, m3l_logs_propagate):
    sup = tmp_path / "sup"
    assert run_cli("synthetic_sup", tiny_data, sup, "max_iters=1", "eval_every=0") == 0  # no token
    ckpt = load_file(str(sup / "model.safetensors"))
    cfg = tiny_config("synthetic_m3l", tiny_data)
    model = LinearFusionSegFormer(cfg.model.build(9))
    token = model.missing_token.detach().clone()
    assert init_from_checkpoint(model, sup / "model.safetensors") == ["missing_token"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt.items())
    assert torch.equal(model.missing_token, token)  # fresh: the supervised model had none
    # The M3L run starts from it; a checkpoint of another architecture is refused by name.
    assert run_cli("synthetic_m3l", tiny_data, tmp_path / "m3l", "max_iters=1", "eval_every=0",
                   f"model.init={sup / 'model.safetensors'}") == 0
    assert "initialised from" in (tmp_path / "m3l" / "train.log").read_text()
    assert run_cli("synthetic_m3l", tiny_data, tmp_path / "bad", "max_iters=1", "model.decoder_dim=16",
                   f"model.init={sup / 'model.safetensors'}") == 1
    assert f"{sup / 'model.safetensors'}: does not fit the configured model" in capsys.readouterr().err


# --- corrupt inputs -------------------------------------------------------------------------------


def test_bad_config_key_is_named_with_its_file(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {CONFIGS / 'synthetic_sup.yaml'}\noptim:\n  learning_rate: 0.1\n")
    assert main(["--config", str(bad), "--data", str(tiny_data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "optim.learning_rate" in err
    assert main(["--config", str(CONFIGS / "synthetic_sup.yaml"), "--data", str(tiny_data),
                 "--out", str(tmp_path / "r"), "--set", "loss.ohem_thresh=2"]) == 2
    assert "--set loss.ohem_thresh" in capsys.readouterr().err


def test_missing_data_and_splits_are_named(tiny_data, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert run_cli("synthetic_sup", missing, tmp_path / "r1") == 1
    assert f"{missing}: dataset directory not found" in capsys.readouterr().err

    assert run_cli("synthetic_sup", tiny_data, tmp_path / "r2", "data.val=holdout") == 1
    assert str(tiny_data / "splits" / "holdout.txt") in capsys.readouterr().err

    assert run_cli("synthetic_sup", tiny_data, tmp_path / "r3", "model.num_classes=13") == 2
    assert "model.num_classes is 13 but the dataset has 9 classes" in capsys.readouterr().err

    weights = tmp_path / "mit_b0.pth"
    assert run_cli("synthetic_sup", tiny_data, tmp_path / "r4", f"model.pretrained={weights}") == 2
    assert f"{weights}" in capsys.readouterr().err


def test_existing_run_and_missing_state_are_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("synthetic_sup", tiny_data, out, "max_iters=1", "eval_every=0") == 0
    assert run_cli("synthetic_sup", tiny_data, out, "max_iters=1") == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "empty")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    (out / "state" / "manifest.json").write_text("{not json")
    assert main(["--resume", str(out)]) == 1
    assert "manifest.json" in capsys.readouterr().err


# --- the paper's dataset formats ------------------------------------------------------------------


@pytest.mark.parametrize("name,kind,classes", [("stanford_sup_0.1", "stanford", 13), ("sun_sup_6.25", "sun", 37)])
def test_paper_configs_train_on_their_split_file_formats(name, kind, classes, tmp_path):
    data = tmp_path / kind
    write_paper_dataset(data, kind)
    out = tmp_path / "run"
    assert run_cli(name, data, out, "max_iters=2", "eval_every=2") == 0
    meta = read_metadata(out / "model.safetensors")
    assert len(meta["class_names"]) == classes and meta["model"]["backbone"] == "tiny"
    assert meta["extra"]["train_config"]["data"]["format"] == kind
    (val,) = [r for r in records(out) if "val" in r]
    assert val["val"]["rgbd"]["num_pixels"] > 0  # labels decoded into valid class ids
