"""Unit tests of the training pieces: OHEM, EMA teacher, masks, batch plans, lr, parameter groups, config."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3l_core.model import LinearFusionSegFormer, ModalityLayerNorm, ModelConfig
from m3l_core.train import typed_yaml
from m3l_core.train.config import ConfigError, load_config
from m3l_core.train.ema import EMATeacher, ema_decay
from m3l_core.train.losses import compute_losses, heads_for, ohem_cross_entropy, ohem_keep_mask, pseudo_weight
from m3l_core.train.masking import MASK_CHOICES, BatchPlan, draw_masks, plan_batch, present_from_choices
from m3l_core.train.optim import build_optimizer, get_lr, set_lr
from m3l_core.train.steps import step_keys, stream_index

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "train"


def tiny_model(**kw) -> LinearFusionSegFormer:
    torch.manual_seed(0)
    return LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=5, decoder_dim=32, **kw))


def logits_with_gt_prob(p: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose class-0 softmax probability is exactly p."""
    p = torch.tensor(p, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()])[None, :, None, :].float()


# --- OHEM -----------------------------------------------------------------------------------------


def test_ohem_keeps_uncertain_pixels_and_at_least_min_kept_hardest():
    probs = [0.10, 0.50, 0.69, 0.71, 0.80, 0.95, 0.99, 0.30]
    logits = logits_with_gt_prob(probs)
    target = torch.zeros(1, 1, 8, dtype=torch.long)
    target[0, 0, 7] = 255  # ignored (p = 0.30 would otherwise be kept)

    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=0)[0, 0].tolist()
    assert keep == [True, True, True, False, False, False, False, False]
    # min_kept=5 raises the threshold to the 5th smallest probability (0.80).
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=5)[0, 0].tolist()
    assert keep == [True, True, True, True, True, False, False, False]
    # min_kept below the count already kept changes nothing.
    assert ohem_keep_mask(logits, target, thresh=0.7, min_kept=2)[0, 0].tolist() == \
        [True, True, True, False, False, False, False, False]
    # min_kept >= number of valid pixels keeps every valid pixel, never the ignored one.
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=7)[0, 0].tolist()
    assert keep == [True] * 7 + [False]

    # The loss is plain CE averaged over the kept pixels.
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=5)
    expected = -np.mean(np.log(probs[:5]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohem_matches_brute_force_on_random_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 7, generator=g) * 3
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    target[0, :2] = 255
    for thresh, min_kept in [(0.7, 0), (0.7, 20), (0.3, 50), (0.9, 5)]:
        keep = ohem_keep_mask(logits, target, thresh=thresh, min_kept=min_kept)
        valid = target != 255
        p = logits.softmax(1).gather(1, target.clamp(max=3)[:, None])[:, 0][valid]
        t = max(thresh, sorted(p.tolist())[min_kept - 1]) if min_kept else thresh
        assert torch.equal(keep[valid], p <= t)
        assert not keep[~valid].any()
        assert int(keep.sum()) >= min(min_kept, int(valid.sum()))


def test_ohem_without_labeled_pixels_is_zero_with_zero_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = ohem_cross_entropy(logits, torch.full((1, 4, 4), 255), min_kept=10)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


# --- EMA teacher ----------------------------------------------------------------------------------


def test_ema_decay_schedule():
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == 0.5
    assert ema_decay(9) == pytest.approx(0.9)
    assert ema_decay(99) == pytest.approx(0.99)
    assert ema_decay(10_000) == 0.99
    assert ema_decay(10_000, alpha=0.999) == pytest.approx(0.999)


def test_ema_teacher_updates_parameters_and_buffers():
    student = tiny_model()
    teacher = EMATeacher(student, alpha=0.99)
    assert not teacher.module.training
    assert all(not p.requires_grad for p in teacher.module.parameters())
    bn = student.decoder.fuse[1]
    t_bn = teacher.module.decoder.fuse[1]

    def perturb(v: float) -> None:
        with torch.no_grad():
            for p in student.parameters():
                p.fill_(v)
            bn.running_mean.fill_(v)
            bn.running_var.fill_(v + 1)
            bn.num_batches_tracked.fill_(int(v * 10))

    perturb(1.0)
    assert teacher.update(student, step=0) == 0.0  # a = 0: plain copy
    for (name, t), s in zip(teacher.module.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), name

    perturb(2.0)
    a = teacher.update(student, step=9)  # a = 0.9
    assert a == pytest.approx(0.9)
    assert torch.allclose(teacher.module.missing_token, torch.full_like(student.missing_token, 0.9 * 1 + 0.1 * 2))
    assert torch.allclose(t_bn.running_mean, torch.full_like(bn.running_mean, 1.1))
    assert torch.allclose(t_bn.running_var, torch.full_like(bn.running_var, 0.9 * 2 + 0.1 * 3))
    assert int(t_bn.num_batches_tracked) == 20  # integer buffers are copied
    assert all(torch.allclose(p, torch.full_like(p, 1.1)) for p in teacher.module.parameters())

    perturb(0.0)
    teacher.update(student, step=5000)  # capped at 0.99
    assert torch.allclose(t_bn.running_mean, torch.full_like(bn.running_mean, 0.99 * 1.1))
    assert teacher.module.decoder.fuse[1] is t_bn and student.decoder.fuse[1] is bn  # nothing shared
    assert teacher.module.missing_token.data_ptr() != student.missing_token.data_ptr()


# --- masks and batch plans ------------------------------------------------------------------------


@pytest.mark.parametrize("probs", [(1 / 3, 1 / 3, 1 / 3), (0.5, 0.25, 0.25)])
def test_mask_distribution_over_many_draws(probs):
    g = torch.Generator().manual_seed(123)
    n = 30_000
    choices = torch.cat([draw_masks(30, g, probs) for _ in range(n // 30)])
    counts = torch.bincount(choices, minlength=3).double()
    expected = torch.tensor(probs, dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, (counts, expected)  # 2 dof, p = 0.001
    present = present_from_choices(choices)
    assert MASK_CHOICES == ("mask_rgb", "mask_depth", "none")
    assert torch.equal(present[choices == 0], torch.tensor([[False, True]]).expand(int(counts[0]), 2))
    assert torch.equal(present[choices == 1], torch.tensor([[True, False]]).expand(int(counts[1]), 2))
    assert bool(present[choices == 2].all())
    assert bool(present.any(1).all())  # never both masked


def test_masks_are_reproducible_from_the_generator_seed():
    a = draw_masks(64, torch.Generator().manual_seed(7))
    b = draw_masks(64, torch.Generator().manual_seed(7))
    c = draw_masks(64, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_plans_of_the_four_frameworks():
    g = torch.Generator().manual_seed(0)
    L, U = 3, 4
    sup = plan_batch("supervised", L, 0, g)
    assert sup.source.tolist() == [0, 1, 2] and bool(sup.present.all())
    assert sup.supervised.all() and not sup.pseudo.any()

    md = plan_batch("modality_dropout", L, 0, g)
    assert md.source.tolist() == [0, 1, 2] and md.supervised.all() and not md.pseudo.any()

    mt = plan_batch("mean_teacher", L, U, g)
    assert mt.source.tolist() == list(range(7)) and bool(mt.present.all())
    assert mt.supervised.tolist() == [True] * 3 + [False] * 4
    assert mt.pseudo.tolist() == [False] * 3 + [True] * 4
    assert mt.teacher_rows().tolist() == [3, 4, 5, 6]

    m3l = plan_batch("m3l", L, U, g)
    assert m3l.source.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]  # [labeled, labeled copy, unlabeled]
    assert bool(m3l.present[:L].all())  # the clean labeled part is never masked
    assert m3l.supervised.tolist() == [True] * 6 + [False] * 4  # ground truth on clean + copy
    assert bool(m3l.pseudo.all())  # pseudo-labels on every student input (Eq. 10)
    assert m3l.teacher_rows().tolist() == list(range(7))
    with pytest.raises(ValueError, match="unknown framework"):
        plan_batch("fixmatch", 1, 1, g)


def test_m3l_masks_cover_copy_and_unlabeled_only():
    g = torch.Generator().manual_seed(3)
    seen = torch.zeros(3, dtype=torch.long)
    for _ in range(300):
        plan = plan_batch("m3l", 2, 2, g)
        assert bool(plan.present[:2].all())
        row = plan.present[2:]
        seen += torch.stack([(~row[:, 0]).sum(), (~row[:, 1]).sum(), row.all(1).sum()])
    frac = seen.double() / seen.sum()
    assert torch.allclose(frac, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04)


def test_which_rows_receive_which_loss_in_an_m3l_batch():
    L, U, C = 2, 2, 4
    g = torch.Generator().manual_seed(0)
    plan = plan_batch("m3l", L, U, g)
    labels = torch.randint(0, C, (L + U, 5, 5), generator=g)
    labels[L:] = 255  # unlabeled
    pseudo = torch.randint(0, C, (L + U, 5, 5), generator=g)
    heads = heads_for(("rgb", "depth"))
    outs = {h: torch.randn(len(plan), C, 5, 5, generator=g, requires_grad=True) for h in heads}

    losses = compute_losses(outs, plan, labels, pseudo, heads=heads, ohem_thresh=1.0, ohem_min_kept=0.0,
                            lambda_pseudo=0.5)
    # Numbers: OHEM (threshold 1 keeps everything) on rows 0..2L-1 against the labels of their source ...
    sup_rows = torch.arange(2 * L)
    exp_sup = sum(F.cross_entropy(outs[h][sup_rows], labels[plan.source[sup_rows]]) for h in heads) / 3
    # ... and plain CE on every row against the pseudo-label of its source image.
    exp_pse = sum(F.cross_entropy(outs[h], pseudo[plan.source]) for h in heads) / 3
    assert losses["sup"].item() == pytest.approx(exp_sup.item(), rel=1e-6)
    assert losses["pseudo"].item() == pytest.approx(exp_pse.item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx(exp_sup.item() + 0.5 * exp_pse.item(), rel=1e-6)

    # Gradients: the supervised loss reaches only the clean and the copied labeled rows of every head.
    for name, want_rows in (("sup", [0, 1, 2, 3]), ("pseudo", [0, 1, 2, 3, 4, 5])):
        grads = torch.autograd.grad(losses[name], list(outs.values()), retain_graph=True)
        for h, gr in zip(heads, grads):
            rows = [i for i in range(len(plan)) if gr[i].abs().sum() > 0]
            assert rows == want_rows, (name, h)


def test_mean_teacher_losses_split_labeled_and_unlabeled_rows():
    g = torch.Generator().manual_seed(0)
    plan = plan_batch("mean_teacher", 2, 3, g)
    labels = torch.randint(0, 3, (5, 4, 4), generator=g)
    pseudo = torch.randint(0, 3, (5, 4, 4), generator=g)
    out = {h: torch.randn(5, 3, 4, 4, generator=g, requires_grad=True) for h in heads_for(("rgb", "depth"))}
    losses = compute_losses(out, plan, labels, pseudo, heads=list(out), ohem_thresh=1.0, ohem_min_kept=0.0)
    g_sup = torch.autograd.grad(losses["sup"], out["ensemble"], retain_graph=True)[0]
    g_pse = torch.autograd.grad(losses["pseudo"], out["ensemble"])[0]
    assert [bool(g_sup[i].any()) for i in range(5)] == [True, True, False, False, False]
    assert [bool(g_pse[i].any()) for i in range(5)] == [False, False, True, True, True]


def test_pseudo_label_weight_ramp_up():
    assert pseudo_weight(0, 1.0, 0) == 1.0  # the paper: full weight from the start
    assert pseudo_weight(0, 2.0, 100) == pytest.approx(2.0 * math.exp(-5))
    assert pseudo_weight(50, 1.0, 100) == pytest.approx(math.exp(-1.25))
    assert pseudo_weight(100, 1.0, 100) == 1.0 and pseudo_weight(500, 0.5, 100) == 0.5
    ws = [pseudo_weight(s, 1.0, 100) for s in range(101)]
    assert all(a < b for a, b in zip(ws, ws[1:]))


def test_uni_modal_trains_its_single_head():
    assert heads_for(("rgb",)) == ("rgb",)
    assert heads_for(("depth",)) == ("depth",)
    assert heads_for(("rgb", "depth")) == ("ensemble", "rgb", "depth")


# --- learning rate and optimizer ------------------------------------------------------------------


def test_poly_lr_schedule():
    assert get_lr(1e-4, 0, 100) == 1e-4
    assert get_lr(1e-4, 50, 100) == pytest.approx(1e-4 * 0.5 ** 0.9)
    assert get_lr(3e-4, 99, 100, power=0.9) == pytest.approx(3e-4 * 0.01 ** 0.9)
    assert get_lr(1e-4, 100, 100) == 0.0
    assert get_lr(1e-4, 25, 100, power=1.0) == pytest.approx(0.75e-4)
    lrs = [get_lr(1e-4, s, 15300) for s in range(0, 15300, 100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError):
        get_lr(1e-4, 101, 100)


def test_param_groups_settings_and_coverage():
    model = tiny_model()
    opt = build_optimizer(model, lr=1e-4, weight_decay=1e-4, decoder_lr_mult=3.0)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"encoder", "encoder_norm", "decoder"}
    assert (groups["encoder"]["lr"], groups["encoder"]["weight_decay"]) == (1e-4, 1e-4)
    assert (groups["encoder_norm"]["lr"], groups["encoder_norm"]["weight_decay"]) == (1e-4, 0.0)
    assert groups["decoder"]["lr"] == pytest.approx(3e-4) and groups["decoder"]["weight_decay"] == 1e-4
    assert opt.defaults["betas"] == (0.9, 0.999)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # every parameter exactly once
    ids_of = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.ensemble_logits) in ids_of["encoder_norm"]
    assert id(model.missing_token) in ids_of["encoder_norm"]
    for mod in model.modules():
        if isinstance(mod, ModalityLayerNorm):
            assert {id(mod.weight), id(mod.bias)} <= ids_of["encoder_norm"]
    assert all(id(p) in ids_of["decoder"] for p in model.decoder.parameters())
    assert id(model.encoder.patch_embed.proj.weight) in ids_of["encoder"]

    lrs = set_lr(opt, 50, 100, 0.9)
    assert lrs["encoder"] == pytest.approx(1e-4 * 0.5 ** 0.9)
    assert lrs["decoder"] == pytest.approx(3e-4 * 0.5 ** 0.9)


def test_token_ensemble_and_both_norm_slots_are_trained():
    model = tiny_model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=1e-4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = BatchPlan(source=torch.tensor([0, 1, 0, 1]),
                     present=torch.tensor([[True, True], [True, True], [False, True], [True, False]]),
                     supervised=torch.tensor([True, True, True, True]), pseudo=torch.zeros(4, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    rgb, depth = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    labels = torch.randint(0, 5, (2, 32, 32), generator=g)
    out = model(rgb[plan.source], depth[plan.source], plan.present)
    loss = compute_losses(out, plan, labels, None, heads=heads_for(model.modalities))["loss"]
    loss.backward()
    assert model.missing_token.grad.abs().sum() > 0
    assert model.ensemble_logits.grad.abs().sum() > 0
    for name, mod in model.named_modules():
        if isinstance(mod, ModalityLayerNorm):
            assert (mod.weight.grad.abs().sum(1) > 0).all(), name  # both modality slots
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"missing_token", "ensemble_logits"} <= changed
    assert len(changed) == len(before)  # AdamW moved every parameter


# --- data order ----------------------------------------------------------------------------------


def test_stream_cycles_every_sample_once_per_pass_and_reshuffles():
    n = 7
    first = [stream_index(n, p, seed=0, stream=0) for p in range(n)]
    second = [stream_index(n, p, seed=0, stream=0) for p in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second
    assert first != [stream_index(n, p, seed=1, stream=0) for p in range(n)]


def test_step_keys_shard_ranks_and_are_deterministic():
    kw = dict(sizes=(10, 20), batches=(2, 3), seed=5)
    one = step_keys(4, **kw)
    assert one == step_keys(4, **kw)
    assert [k[0] for k in one] == [0, 0, 1, 1, 1]  # labeled first
    # Two ranks at batch b load the same samples as one rank at batch 2b.
    r0 = step_keys(4, **kw, rank=0, world_size=2)
    r1 = step_keys(4, **kw, rank=1, world_size=2)
    big = step_keys(4, sizes=(10, 20), batches=(4, 6), seed=5)
    assert sorted(r0 + r1) == sorted(big)
    assert not set(k[2] for k in r0) & set(k[2] for k in r1)  # distinct augmentation seeds


# --- config ---------------------------------------------------------------------------------------


def test_shipped_configs_load_with_the_paper_settings():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for f in ("0.1", "0.2", "1"):
        for fw in ("m3l", "mt", "sup"):
            assert f"stanford_{fw}_{f}" in names
    for f in ("6.25", "12.5", "25"):
        for fw in ("m3l", "mt", "sup"):
            assert f"sun_{fw}_{f}" in names
    for name in names:
        load_config(CONFIGS / f"{name}.yaml")  # every file is valid
    c = load_config(CONFIGS / "stanford_m3l_0.1.yaml")
    assert (c.framework, c.model.backbone, c.data.format, c.data.crop_size) == ("m3l", "mit_b2", "stanford", (540, 540))
    # The reference's count: epochs x (training images // batch 16).
    assert (c.max_iters, c.labeled_batch, c.unlabeled_batch, c.eval_every) == (5 * (49199 // 16), 16, 16, 300)
    assert (c.optim.lr, c.optim.decoder_lr_mult, c.optim.weight_decay, c.optim.poly_power) == (1e-4, 3.0, 1e-4, 0.9)
    assert (c.loss.ohem_thresh, c.loss.lambda_pseudo, c.loss.alpha_ema) == (0.7, 1.0, 0.99)
    assert c.model.missing_token and c.model.num_classes == 13
    assert c.data.train_labeled.endswith("0.1.txt")
    s = load_config(CONFIGS / "sun_mt_12.5.yaml")
    assert (s.framework, s.data.crop_size, s.max_iters, s.model.num_classes) == ("mean_teacher", (500, 500), 50 * (4757 // 16), 37)
    assert not s.model.missing_token
    assert load_config(CONFIGS / "sun_sup_25.yaml").framework == "supervised"


def test_config_errors_name_the_key_and_the_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("max_iters: 10\noptim:\n  lr: 1e-3\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nframework: supervised\n")
    c = load_config(child, ["optim.decoder_lr_mult=2"])
    assert (c.max_iters, c.optim.lr, c.framework, c.optim.decoder_lr_mult) == (10, 1e-3, "supervised", 2.0)

    bad = tmp_path / "bad.yaml"
    bad.write_text("base: base.yaml\noptim:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'optim\.lrr'"):
        load_config(bad)
    bad.write_text("data:\n  crop_size: big\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: 'data\.crop_size' must be a list"):
        load_config(bad)
    bad.write_text("max_iters: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: 'max_iters' must be >= 1"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"--set model\.depthh: unknown config key 'model\.depthh'"):
        load_config(child, ["model.depthh=3"])
    with pytest.raises(ConfigError, match=r"--set labeled_batch: 'labeled_batch' must be an integer"):
        load_config(child, ["labeled_batch=two"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(child, ["labeled_batch"])
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)
    with pytest.raises(ConfigError, match=r"--set precision: 'precision' must be one of"):
        load_config(child, ["precision=fp8"])


def test_auto_val_metric():
    def metric(*sets):
        return load_config(None, list(sets)).resolved_val_metric()

    assert metric("framework=m3l") == "mm_robust"
    assert metric("framework=modality_dropout") == "mm_robust"
    assert metric("framework=supervised") == "rgbd"
    assert metric("framework=mean_teacher") == "rgbd"
    assert metric("framework=supervised", "model.modalities=[depth]") == "depth"
    with pytest.raises(ConfigError, match="val_metric"):
        load_config(None, ["framework=supervised", "model.modalities=[rgb]", "val_metric=rgbd"])
    assert math.isclose(sum(load_config(None).loss.mask_probs), 1.0)


# --- the generic typed-YAML engine (no training schema involved) ------------------------------------


@dataclasses.dataclass
class _Inner:
    size: tuple[int, int] = (1, 1)
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class _Outer:
    name: str = "x"
    rate: float = 0.1
    limit: int | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)

    def __post_init__(self) -> None:
        typed_yaml.make_checker(self)("rate", self.rate > 0, "> 0")


def test_typed_yaml_engine_reads_any_dataclass_tree(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {size: [3, 4]}\n")
    (tmp_path / "leaf.yaml").write_text("base: base.yaml\nrate: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    cfg = typed_yaml.load(_Outer, tmp_path / "leaf.yaml", ["inner.tags=[a, b]", "limit=7"])
    assert cfg == _Outer(name="base", rate=1e-3, limit=7, inner=_Inner(size=(3, 4), tags=("a", "b")))
    assert typed_yaml.load(_Outer, None, [], extra={"inner": {"size": [5, 6]}}).inner.size == (5, 6)
    again = tmp_path / "dump.yaml"
    again.write_text(typed_yaml.dump(cfg))
    assert typed_yaml.load(_Outer, again) == cfg
    with pytest.raises(typed_yaml.ConfigError, match=r"leaf2.yaml: 'inner.size' must be a list of 2 values"):
        (tmp_path / "leaf2.yaml").write_text("inner: {size: [1, 2, 3]}\n")
        typed_yaml.load(_Outer, tmp_path / "leaf2.yaml")
    with pytest.raises(typed_yaml.ConfigError, match=r"--set rate: 'rate' must be > 0"):
        typed_yaml.load(_Outer, None, ["rate=-1"])
    with pytest.raises(typed_yaml.ConfigError, match=r"unknown config key 'inner.colour'"):
        typed_yaml.load(_Outer, None, ["inner.colour=red"])
