"""Reference-exact options: defaults keep the project's behaviour, the paper configs switch to the reference's."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from m3l_core.checkpoint import load_checkpoint, save_checkpoint
from m3l_core.model import LinearFusionSegFormer, ModalityLayerNorm, ModelConfig, upsample_logits
from m3l_core.preprocess import Preprocessing, depth_input, normalize_depth, resize_nearest
from m3l_core.train.losses import compute_losses, min_kept_count, ohem_cross_entropy
from m3l_core.train.masking import plan_batch

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="tiny", num_classes=5, decoder_dim=32, drop_path_rate=0.0)


def tiny(**kw) -> LinearFusionSegFormer:
    torch.manual_seed(0)
    return LinearFusionSegFormer(ModelConfig(**{**TINY, **kw}))


def test_checkpoint_without_the_new_fields_loads_with_the_old_behaviour(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny(), class_names=list("abcde"), preprocessing=Preprocessing(input_size=(32, 32)))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["m3l"])
    for k in ("align_corners", "layernorm_eps", "token_init", "freeze_bn"):
        del meta["model"][k]  # as written before these options existed
    del meta["preprocessing"]["nearest_align"]
    save_file(load_file(str(path)), str(path), metadata={"m3l": json.dumps(meta)})
    ckpt = load_checkpoint(path)
    cfg, pre = ckpt.model_config, ckpt.preprocessing
    assert (cfg.align_corners, cfg.layernorm_eps, cfg.token_init, cfg.freeze_bn) == (False, None, "trunc_normal", False)
    assert (pre.depth_norm, pre.nearest_align) == ("minmax", "center")
    eps = {n: m.eps for n, m in ckpt.model.named_modules() if isinstance(m, ModalityLayerNorm)}
    assert eps["encoder.patch_embed.norm"] == 1e-5 and eps["encoder.stages.0.blocks.0.attn.norm"] == 1e-5
    assert eps["encoder.stages.0.blocks.0.norm1"] == 1e-6


def test_layernorm_eps_option_reaches_every_layernorm():
    eps = {m.eps for m in tiny(layernorm_eps=1e-6).modules() if isinstance(m, ModalityLayerNorm)}
    assert eps == {1e-6}
    with pytest.raises(ValueError, match="layernorm_eps"):
        ModelConfig(**TINY, layernorm_eps=0.0)


def test_align_corners_option_is_the_final_upsampling():
    rgb, depth = torch.randn(2, 3, 44, 36), torch.rand(2, 1, 44, 36)
    a, b = tiny().eval(), tiny(align_corners=True).eval()
    with torch.no_grad():
        raw = b.decoder(b.encode(torch.cat([rgb, depth.expand(-1, 3, -1, -1)]), torch.ones(4, dtype=torch.bool)))
        want = F.interpolate(raw, size=(44, 36), mode="bilinear", align_corners=True)
        out_b, out_a = b(rgb, depth), a(rgb, depth)
    torch.testing.assert_close(out_b["rgb"], want[:2], rtol=0, atol=1e-6)
    assert (out_a["rgb"] - out_b["rgb"]).abs().max() > 1e-3  # the option changes the logits
    small = torch.randn(1, 3, 5, 7)
    assert torch.equal(upsample_logits(small, (5, 7), align_corners=True), small)
    torch.testing.assert_close(upsample_logits(small, (9, 13), align_corners=True)[..., ::2, ::2], small)


def test_freeze_bn_keeps_decoder_statistics_but_trains_the_affine():
    model = tiny(freeze_bn=True).train()
    bn = model.decoder.fuse[1]
    assert not bn.training and model.training and model.decoder.dropout.training
    before = bn.running_mean.clone()
    out = model(torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32))
    (out["rgb"].sum() + out["depth"].sum()).backward()
    assert torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 0
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    model.eval().train()  # e.g. around a validation: still frozen
    assert not bn.training
    free = tiny().train()
    free(torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32))
    assert free.decoder.fuse[1].training and int(free.decoder.fuse[1].num_batches_tracked) == 1


def test_token_init_option():
    wide = dict(TINY, backbone="mit_b0")
    torch.manual_seed(0)
    ref = LinearFusionSegFormer(ModelConfig(**wide, token_init="randn")).missing_token
    torch.manual_seed(0)
    own = LinearFusionSegFormer(ModelConfig(**wide)).missing_token
    assert 0.6 < float(ref.detach().std()) < 1.5 and float(own.detach().std()) < 0.05
    with pytest.raises(ValueError, match="token_init"):
        ModelConfig(**TINY, token_init="zeros")


@pytest.mark.parametrize("src,dst", [((1080, 1080), (540, 540)), ((530, 730), (500, 500)), ((427, 561), (500, 500)),
                                     ((37, 53), (11, 29)), ((20, 20), (45, 7))])
def test_corner_alignment_is_cv2_inter_nearest(src, dst):
    img = np.random.default_rng(0).integers(0, 65535, src, dtype=np.uint16)
    want = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(resize_nearest(img, dst, align="corner"), want)


def test_center_and_corner_pick_different_pixels():
    row = np.arange(8)[None].repeat(2, 0)
    assert resize_nearest(row, (1, 4), align="corner").tolist() == [[0, 2, 4, 6]]
    assert resize_nearest(row, (1, 4)).tolist() == [[1, 3, 5, 7]]


def test_minmax_all_counts_invalid_pixels_as_zero():
    depth = np.array([[0, 2000, 3000, 4000]], np.uint16)  # mm; 0 invalid
    ref = Preprocessing(depth_norm="minmax_all")
    np.testing.assert_allclose(normalize_depth(depth, ref)[0], [[0, 0.5, 0.75, 1.0]], atol=1e-6)  # d / max
    np.testing.assert_allclose(normalize_depth(depth, Preprocessing())[0], [[0, 0, 0.5, 1.0]], atol=1e-6)
    full = np.array([[2000, 3000, 4000, 5000]], np.uint16)  # nothing invalid: plain min-max either way
    np.testing.assert_allclose(normalize_depth(full, ref)[0], normalize_depth(full, Preprocessing())[0])


def test_depth_input_takes_reference_bounds_from_the_full_frame():
    depth = np.full((4, 4), 2000, np.uint16)
    depth[1, 1] = 8000  # dropped by a corner-aligned 1/2 resize (keeps rows/cols 0, 2)
    depth[0, 2] = 0
    ref = Preprocessing(input_size=(2, 2), depth_norm="minmax_all", nearest_align="corner")
    np.testing.assert_allclose(depth_input(depth, ref)[0], [[0.25, 0.0], [0.25, 0.25]], atol=1e-6)
    own = Preprocessing(input_size=(2, 2))  # project: center alignment, bounds of the resized frame
    np.testing.assert_allclose(depth_input(depth, own)[0], [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)


def test_ohem_min_kept_sized_on_labeled_rows_like_the_reference():
    g = torch.Generator().manual_seed(0)
    plan = plan_batch("m3l", 2, 3, g)  # rows: 2 labeled + 2 masked copies + 3 unlabeled
    labels = torch.randint(0, 4, (5, 10, 10), generator=g)
    labels[2:] = 255
    logits = {h: torch.randn(7, 4, 10, 10, generator=g) for h in ("ensemble", "rgb", "depth")}
    target = labels[plan.source[plan.supervised]]
    assert min_kept_count(0.08, target, 2, "labeled_batch") == 16  # int(10*10*0.08) * 2 loaded labeled samples
    assert min_kept_count(0.08, target, 2, "supervised_rows") == 32  # 8 % of the 4 supervised rows
    for basis, k in (("labeled_batch", 16), ("supervised_rows", 32)):
        got = compute_losses(logits, plan, labels, torch.zeros_like(labels), heads=("ensemble", "rgb", "depth"), ohem_thresh=0.3,
                             min_kept_basis=basis, lambda_pseudo=0.0)["sup"]
        rows = plan.supervised.nonzero().flatten()
        want = sum(ohem_cross_entropy(logits[h][rows], target, thresh=0.3, min_kept=k) for h in logits) / 3
        torch.testing.assert_close(got, want)


def test_paper_configs_use_the_reference_settings_and_iterations():
    from m3l_core.train.config import load_config

    expected = {"stanford": 49199 // 16 * 5, "sun": 4757 // 16 * 50}  # reference epochs x niters_per_epoch
    assert expected == {"stanford": 15370, "sun": 14850}
    for path in sorted((REPO / "config/train").glob("*.yaml")):
        name = path.stem
        if name.startswith("framework_"):
            continue
        cfg = load_config(path)
        ref = (cfg.model.align_corners, cfg.model.layernorm_eps, cfg.model.token_init, cfg.model.freeze_bn,
               cfg.data.depth_norm, cfg.data.nearest_align, cfg.loss.ohem_min_kept_basis)
        if name.startswith(("stanford_", "sun_", "paper_")):
            assert ref == (True, 1e-6, "randn", True, "minmax_all", "corner", "labeled_batch"), name
            if not name.startswith("paper_"):
                assert cfg.max_iters == expected[name.split("_")[0]], name
        elif name.startswith("synthetic_"):
            assert ref == (False, None, "trunc_normal", False, "minmax", "center", "supervised_rows"), name
