"""The trainer's baseline options: CPS-Seg, the pseudo-label confidence threshold, TokenFusion's L1
loss and the trained heads taken from the model config."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from m3l_core.checkpoint import load_checkpoint, read_metadata
from m3l_core.cli import evaluate as evaluate_cli
from m3l_core.cli.train import main
from m3l_core.data.folder import load_classes
from m3l_core.inference import Segmenter
from m3l_core.model import ModelConfig
from m3l_core.report import load_metrics
from m3l_core.train.config import ConfigError, load_config
from m3l_core.train.cps import build_cps_pair, cross_pseudo_losses
from m3l_core.train.init_weights import build_student
from m3l_core.train.losses import (compute_losses, ohem_cross_entropy, pseudo_label_cross_entropy, pseudo_labels)
from m3l_core.train.masking import draw_masks, plan_batch, present_from_choices
from train_fixtures import CONFIGS, TINY, tiny_config, tiny_data  # noqa: F401  (fixture)

C, H, W = 4, 5, 6


def run_cli(name: str, data: Path, out: Path, *sets: str, extra: tuple[str, ...] = ()) -> int:
    args = ["--config", str(CONFIGS / f"{name}.yaml"), "--data", str(data), "--out", str(out), "--device", "cpu",
            *extra]
    for s in [*TINY, *sets]:
        args += ["--set", s]
    return main(args)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def state_tensors(run: Path) -> dict[str, torch.Tensor]:
    m = json.loads((run / "state" / "manifest.json").read_text())
    tensors = {f"student.{k}": v for k, v in load_file(str(run / "state" / m["files"]["student"])).items()}
    opt = torch.load(run / "state" / m["files"]["optimizer"], weights_only=True)["optimizer"]
    tensors.update({f"opt.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()})
    return tensors


# --- CPS: the batch plan and the cross supervision --------------------------------------------------


def test_cps_plan_has_one_row_per_sample_and_masks_only_when_asked():
    plan = plan_batch("cps", 2, 3, torch.Generator().manual_seed(0))
    assert plan.source.tolist() == [0, 1, 2, 3, 4]
    assert plan.present.all() and plan.supervised.tolist() == [True, True, False, False, False]
    assert plan.pseudo.all()
    masked = plan_batch("cps", 2, 3, torch.Generator().manual_seed(5), mask=True)
    want = present_from_choices(draw_masks(5, torch.Generator().manual_seed(5)))
    assert torch.equal(masked.present, want) and not masked.present.all()
    with pytest.raises(ValueError, match="cps"):
        plan_batch("m3l", 2, 3, torch.Generator(), mask=True)


@pytest.mark.parametrize("sets,key", [
    (["loss.cps_modality_dropout=true"], "loss.cps_modality_dropout"),  # framework m3l
    (["framework=cps", "loss.cps_modality_dropout=true", "model.modalities=[rgb]"], "model.modalities"),
    (["framework=cps", "loss.cps_weight=-1"], "loss.cps_weight"),
])
def test_bad_cps_settings_name_the_field(sets, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, sets)
    md = load_config(CONFIGS / "synthetic_cps_md.yaml")
    assert md.resolved_val_metric() == "mm_robust" and md.uses_unlabeled and md.model.missing_token


def _logits(seed: int, n: int = 5, requires_grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, C, H, W, generator=g)).requires_grad_(requires_grad)


def test_each_network_learns_the_other_networks_argmax_and_ohem_on_labeled_rows():
    plan = plan_batch("cps", 2, 3, torch.Generator().manual_seed(0))
    # Unlabeled rows carry real-looking labels here: the supervised loss must still skip them.
    labels = torch.randint(0, C, (5, H, W), generator=torch.Generator().manual_seed(1))
    a, b = _logits(2), _logits(3)
    outs = ({"ensemble": a, "rgb": a}, {"ensemble": b, "rgb": b})  # uni-modal: the ensemble is the branch
    kw = dict(heads=("rgb",), ohem_thresh=0.7, ohem_min_kept=0.1)
    got = cross_pseudo_losses(outs, plan, labels, lambda_pseudo=1.5, **kw)

    min_kept = int(0.1 * 2 * H * W)
    sup = [ohem_cross_entropy(x[:2], labels[:2], thresh=0.7, min_kept=min_kept) for x in (a, b)]
    cross = [F.cross_entropy(a, b.argmax(1)), F.cross_entropy(b, a.argmax(1))]
    torch.testing.assert_close(got["sup"], sup[0] + sup[1])
    torch.testing.assert_close(got["pseudo"], cross[0] + cross[1])
    torch.testing.assert_close(got["loss"], sup[0] + sup[1] + 1.5 * (cross[0] + cross[1]))
    assert got["pseudo_kept"] == 1.0

    # No gradient flows into a target: each network's gradient is that of its OWN terms only.
    got["loss"].backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    (ohem_cross_entropy(a2[:2], labels[:2], thresh=0.7, min_kept=min_kept)
     + 1.5 * F.cross_entropy(a2, b.detach().argmax(1))).backward()
    (ohem_cross_entropy(b2[:2], labels[:2], thresh=0.7, min_kept=min_kept)
     + 1.5 * F.cross_entropy(b2, a.detach().argmax(1))).backward()
    torch.testing.assert_close(ga, a2.grad)
    torch.testing.assert_close(gb, b2.grad)


def test_cps_target_is_the_other_ensemble_and_trains_every_head():
    plan = plan_batch("cps", 1, 1, torch.Generator().manual_seed(0))
    labels = torch.full((2, H, W), 255)
    outs = [{h: _logits(10 * i + j, n=2) for j, h in enumerate(("ensemble", "rgb", "depth"))} for i in range(2)]
    got = cross_pseudo_losses(outs, plan, labels, heads=("ensemble", "rgb", "depth"), lambda_pseudo=1.0)
    want = sum(F.cross_entropy(outs[i][h], outs[1 - i]["ensemble"].argmax(1)) for i in range(2)
               for h in ("ensemble", "rgb", "depth")) / 3
    torch.testing.assert_close(got["pseudo"], want)
    assert got["sup"] == 0  # no labeled pixel


def test_cps_networks_start_different_and_the_first_as_a_single_model_would(tiny_data):
    cfg = tiny_config("synthetic_cps", tiny_data)
    classes = load_classes(tiny_data / "classes.yaml")
    pair, model_cfg = build_cps_pair(cfg, classes, resume=False)
    single, _ = build_student(cfg, classes, resume=False)
    a, b = pair.nets[0].state_dict(), pair.nets[1].state_dict()
    w = "decoder.classifier.weight"
    assert torch.equal(a[w], single.state_dict()[w]) and not torch.equal(a[w], b[w])
    groups = pair.param_groups()
    assert sum(len(v) for v in groups.values()) == sum(1 for _ in pair.parameters())
    assert pair.first is pair.nets[0] and model_cfg.modalities == ("rgb", "depth")


# --- the confidence threshold (beyond the paper) ----------------------------------------------------


def test_pseudo_threshold_drops_pixels_below_it_and_keeps_those_at_or_above():
    logits = _logits(7, n=2, requires_grad=False)
    conf = logits.softmax(1).amax(1)
    at = float(conf.flatten().sort().values[10])  # a threshold equal to one pixel's confidence
    labels = pseudo_labels(logits, threshold=at, ignore_index=255)
    assert torch.equal(labels == 255, conf < at)
    assert int((labels != 255).sum()) == conf.numel() - 10  # the pixel AT the threshold is kept
    assert torch.equal(labels[labels != 255], logits.argmax(1)[labels != 255])
    assert torch.equal(pseudo_labels(logits), logits.argmax(1))  # 0 keeps every pixel (the paper)
    assert torch.equal(pseudo_labels(logits, threshold=0.0), logits.argmax(1))


def test_pseudo_loss_counts_dropped_pixels_as_zero_and_never_nan():
    logits = _logits(8, n=2)
    target = logits.detach().argmax(1)
    full = pseudo_label_cross_entropy(logits, target)
    torch.testing.assert_close(full, F.cross_entropy(logits, target))
    part = target.clone()
    part[0] = 255
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(pseudo_label_cross_entropy(logits, part), per_pixel[1].sum() / target.numel())
    none = pseudo_label_cross_entropy(logits, torch.full_like(target, 255))
    assert none.item() == 0.0 and none.requires_grad


def test_threshold_config_and_stable_config_values():
    with pytest.raises(ConfigError, match="loss.pseudo_threshold"):
        load_config(None, ["loss.pseudo_threshold=1.0"])
    paper = load_config(CONFIGS / "synthetic_m3l.yaml")
    assert (paper.loss.pseudo_threshold, paper.loss.pseudo_rampup) == (0.0, 0)
    stable = load_config(CONFIGS / "synthetic_m3l_stable.yaml")
    assert (stable.loss.pseudo_threshold, stable.loss.pseudo_rampup, stable.framework) == (0.9, 150, "m3l")
    assert "BEYOND THE PAPER" in (CONFIGS / "synthetic_m3l_stable.yaml").read_text()


def test_m3l_with_a_threshold_logs_the_kept_fraction(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert run_cli("synthetic_m3l_stable", tiny_data, out, "max_iters=2", "eval_every=0",
                   "loss.pseudo_threshold=0.3") == 0
    recs = [r for r in records(out) if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(0.0 <= r["pseudo_kept"] < 1.0 for r in recs)  # an untrained teacher is rarely 30 % sure
    assert all(0 < r["lambda_pseudo"] < 1 for r in recs)  # ramped up
    plain = tmp_path / "plain"
    assert run_cli("synthetic_m3l", tiny_data, plain, "max_iters=1", "eval_every=0") == 0
    assert records(plain)[0]["pseudo_kept"] == 1.0
    sup = tmp_path / "sup"
    assert run_cli("synthetic_sup", tiny_data, sup, "max_iters=1", "eval_every=0") == 0
    assert "pseudo_kept" not in records(sup)[0] and "loss_token_l1" not in records(sup)[0]


# --- TokenFusion's L1 loss and the heads of the model -----------------------------------------------


def test_token_l1_adds_exactly_its_weight_times_the_mean_score():
    plan = plan_batch("supervised", 2, 0, torch.Generator())
    labels = torch.randint(0, C, (2, H, W), generator=torch.Generator().manual_seed(0))
    heads = ("ensemble", "rgb", "depth")
    out = {h: _logits(i, n=2) for i, h in enumerate(heads)}
    scores = torch.rand(2, 37, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    base = compute_losses(out, plan, labels, None, heads=heads)
    got = compute_losses({**out, "token_scores": scores}, plan, labels, None, heads=heads, token_l1=0.25)
    torch.testing.assert_close(got["loss"], base["loss"] + 0.25 * scores.mean())
    torch.testing.assert_close(got["token_l1"], scores.mean())
    got["loss"].backward()
    torch.testing.assert_close(scores.grad, torch.full_like(scores, 0.25 / scores.numel()))
    off = compute_losses({**out, "token_scores": scores}, plan, labels, None, heads=heads)
    torch.testing.assert_close(off["loss"], base["loss"])  # token_l1 = 0: the scores are not used


def test_token_l1_needs_tokenfusion():
    with pytest.raises(ConfigError, match="loss.token_l1"):
        load_config(None, ["loss.token_l1=0.01"])
    assert load_config(None, ["loss.token_l1=0.01", "model.fusion=tokenfusion"]).loss.token_l1 == 0.01


def test_loss_trains_the_heads_of_the_model_config():
    assert ModelConfig(fusion="urn").heads == ("ensemble",)
    assert ModelConfig(modalities=("depth",)).heads == ("depth",)
    assert ModelConfig().heads == ("ensemble", "rgb", "depth")
    plan = plan_batch("supervised", 2, 0, torch.Generator())
    labels = torch.randint(0, C, (2, H, W), generator=torch.Generator().manual_seed(0))
    ens = _logits(0, n=2)
    got = compute_losses({"ensemble": ens}, plan, labels, None, heads=ModelConfig(fusion="urn").heads)
    torch.testing.assert_close(got["sup"], ohem_cross_entropy(ens, labels, thresh=0.7, min_kept=int(0.08 * 2 * H * W)))


@pytest.mark.parametrize("fusion,sets", [("urn", ()), ("tokenfusion", ("loss.token_l1=0.1",))])
def test_urn_and_tokenfusion_train_with_their_heads_and_l1(fusion, sets, tiny_data, tmp_path):
    out = tmp_path / fusion
    assert run_cli("synthetic_sup", tiny_data, out, "max_iters=2", "eval_every=0", f"model.fusion={fusion}",
                   *sets) == 0
    recs = [r for r in records(out) if "loss" in r]
    assert len(recs) == 2 and all(np.isfinite(r["loss"]) for r in recs)
    if fusion == "tokenfusion":
        assert all(0 < r["loss_token_l1"] <= 1 for r in recs)
        for r in recs:  # loss = sup + token_l1 * mean score (no pseudo-labels)
            assert r["loss"] == pytest.approx(r["loss_sup"] + 0.1 * r["loss_token_l1"], rel=1e-5)
    assert read_metadata(out / "model.safetensors")["model"]["fusion"] == fusion


# --- CPS end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["synthetic_cps_rgb", "synthetic_cps_md"])
def test_cps_run_exports_network_a_that_segmenter_and_evaluate_load(name, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(name, tiny_data, out, "max_iters=3", "eval_every=3", "save_every=3") == 0
    cfg = load_config(out / "config.yaml")
    recs = records(out)
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3]
    assert all(r["loss_pseudo"] > 0 and r["pseudo_kept"] == 1.0 and r["lambda_pseudo"] == 1.5 for r in train_recs)
    for r in train_recs:
        assert r["loss"] == pytest.approx(r["loss_sup"] + 1.5 * r["loss_pseudo"], rel=1e-5)

    # The exported model is network A, exactly as in the resumable state; B differs.
    state = load_file(str(out / "state" / json.loads((out / "state/manifest.json").read_text())["files"]["student"]))
    last = load_checkpoint(out / "last.safetensors")
    own = last.model.state_dict()
    assert set(own) == {k[len("nets.0."):] for k in state if k.startswith("nets.0.")}
    assert all(torch.equal(own[k], state[f"nets.0.{k}"]) for k in own)
    assert not torch.equal(own["decoder.classifier.weight"], state["nets.1.decoder.classifier.weight"])
    meta = read_metadata(out / "model.safetensors")
    assert meta["extra"]["framework"] == "cps" and meta["extra"]["val_metric"] == cfg.resolved_val_metric()

    seg = Segmenter.from_checkpoint(out / "model.safetensors")
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    depth = np.full((40, 50), 1500, np.uint16)
    pred = seg.predict(rgb=rgb, depth=None if name.endswith("rgb") else depth)
    assert pred.shape == (40, 50) and pred.max() < seg.num_classes

    ev = tmp_path / "eval"
    assert evaluate_cli.main(["--checkpoint", str(out / "model.safetensors"), "--data", str(tiny_data), "--split",
                              "val", "--out", str(ev), "--workers", "0", "--num-examples", "0"]) == 0
    (val,) = [r for r in recs if "val" in r]
    m = load_metrics(ev / "metrics.json")
    key = cfg.resolved_val_metric()
    assert m[key]["miou"] == pytest.approx(val["val"][key]["miou"])  # evaluate agrees with the validation


def test_cps_interrupted_and_resumed_run_ends_with_identical_state(tiny_data, tmp_path):
    sets = ["max_iters=4", "eval_every=2", "save_every=3", "model.drop_path_rate=0.1", "loss.pseudo_threshold=0.2"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run_cli("synthetic_cps_md", tiny_data, full, *sets) == 0
    assert run_cli("synthetic_cps_md", tiny_data, parts, *sets, extra=("--stop-after", "1")) == 0
    assert main(["--resume", str(parts), "--stop-after", "2"]) == 0  # stops at 3, between two saves
    assert main(["--resume", str(parts)]) == 0
    a, b = state_tensors(full), state_tensors(parts)
    assert a.keys() == b.keys() and any(k.startswith("student.nets.1.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    losses = [[r["loss"] for r in records(run) if "loss" in r] for run in (full, parts)]
    assert losses[0] == losses[1]
