"""URN and TokenFusion as configurations of the one model: their defining mechanisms, heads, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3l_core.checkpoint import load_checkpoint, save_checkpoint
from m3l_core.fusion import mean_over_present, token_exchange
from m3l_core.inference import Segmenter
from m3l_core.model import FUSIONS, LinearFusionSegFormer, ModelConfig, count_parameters
from m3l_core.preprocess import Preprocessing

TINY = dict(backbone="tiny", num_classes=5, decoder_dim=16, drop_path_rate=0.0)


def build(**kw) -> LinearFusionSegFormer:
    torch.manual_seed(0)
    return LinearFusionSegFormer(ModelConfig(**{**TINY, **kw})).eval()


def inputs(b=2, h=64, w=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randn(b, 1, h, w, generator=g)


PRESENT = torch.tensor([[True, True], [True, False], [False, True]])


# ---------------------------------------------------------------- configuration

def test_heads_for_every_fusion_and_config_errors():
    assert ModelConfig(**TINY).heads == ("ensemble", "rgb", "depth")
    assert ModelConfig(**TINY, modalities=("depth",)).heads == ("depth",)
    assert ModelConfig(**TINY, fusion="tokenfusion").heads == ("ensemble", "rgb", "depth")
    assert ModelConfig(**TINY, fusion="urn").heads == ("ensemble",)
    with pytest.raises(ValueError, match="model.fusion must be one of"):
        ModelConfig(fusion="late")
    with pytest.raises(ValueError, match="model.fusion='urn' needs both modalities"):
        ModelConfig(fusion="urn", modalities=("rgb",))
    with pytest.raises(ValueError, match="model.tokenfusion_threshold"):
        ModelConfig(fusion="tokenfusion", tokenfusion_threshold=1.5)
    # A config written before the fields existed is Linear Fusion.
    old = {k: v for k, v in ModelConfig(**TINY).to_dict().items() if k not in ("fusion", "tokenfusion_threshold")}
    assert ModelConfig.from_dict(old).fusion == "linear"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_outputs_are_the_heads(fusion):
    model = build(fusion=fusion)
    rgb, depth = inputs(b=3)
    out = model(rgb, depth, PRESENT)
    logits = {k for k in out if k != "token_scores"}
    assert logits == set(model.config.heads)
    assert all(out[k].shape == (3, 5, 64, 48) for k in logits)
    assert ("token_scores" in out) == (fusion == "tokenfusion")


# ---------------------------------------------------------------- URN

def test_urn_encoders_do_not_share_weights_and_double_the_encoder():
    urn, lf = build(fusion="urn"), build()
    own = {id(p) for p in urn.encoder.parameters()}
    assert not own & {id(p) for p in urn.depth_encoder.parameters()}
    assert urn.missing_token is None and urn.ensemble_logits is None
    with torch.no_grad():
        urn.encoder.patch_embed.proj.weight.add_(1.0)
    assert not torch.equal(urn.encoder.patch_embed.proj.weight, urn.depth_encoder.patch_embed.proj.weight)
    enc = count_parameters(urn.encoder) + count_parameters(urn.depth_encoder)
    shared = count_parameters(lf.encoder)
    assert 1.95 * shared < enc < 2.0 * shared  # two single-modality encoders vs one with 2 LayerNorm slots


def test_mit_b2_sizes_match_paper_table4():
    """TF 26.02M and URN 48.93M in the paper; built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        sizes = {f: count_parameters(LinearFusionSegFormer(ModelConfig(backbone="mit_b2", num_classes=13, fusion=f)))
                 for f in FUSIONS}
    assert sizes["linear"] == 24_751_503  # paper 24.75M, also checked in test_model.py
    assert abs(sizes["tokenfusion"] - 26.02e6) < 0.015e6
    assert abs(sizes["urn"] - 48.93e6) < 0.015e6


def _decoder_input(model, rgb, depth, present):
    seen = []
    handle = model.decoder.register_forward_pre_hook(lambda mod, args: seen.append([f.clone() for f in args[0]]))
    with torch.no_grad():
        model(rgb, depth, present)
    handle.remove()
    return seen[0]


def test_urn_decoder_sees_the_mean_over_present_modalities():
    model = build(fusion="urn")
    rgb, depth = inputs(b=3)
    feats = _decoder_input(model, rgb, depth, PRESENT)
    ones = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        f_rgb, _ = model.encoder_features(model.encoder, rgb, ones)
        f_depth, _ = model.encoder_features(model.depth_encoder, depth.expand(-1, 3, -1, -1), ones)
    for got, r, d in zip(feats, f_rgb, f_depth):
        torch.testing.assert_close(got[0], (r[0] + d[0]) / 2, rtol=0, atol=1e-6)  # both present
        torch.testing.assert_close(got[1], r[1], rtol=0, atol=0)  # depth missing: RGB alone
        torch.testing.assert_close(got[2], d[2], rtol=0, atol=0)  # RGB missing: depth alone
        assert not torch.allclose(r[0], d[0])  # the two encoders really differ


def test_urn_missing_input_never_reaches_the_output():
    model = build(fusion="urn")
    rgb, depth = inputs(b=3)
    with torch.no_grad():
        a = model(rgb, depth, PRESENT)["ensemble"]
        garbage_depth = torch.where(PRESENT[:, 1, None, None, None], depth, torch.full_like(depth, float("nan")))
        garbage_rgb = torch.where(PRESENT[:, 0, None, None, None], rgb, 1e4 * torch.randn_like(rgb))
        b = model(garbage_rgb, garbage_depth, PRESENT)["ensemble"]
        none = torch.zeros(2, 2, dtype=torch.bool)  # nothing present: the decoder's input-free prior
        c, d = model(*inputs(b=2, seed=5), none)["ensemble"], model(*inputs(b=2, seed=6), none)["ensemble"]
    assert torch.equal(a, b) and torch.isfinite(b).all()
    assert torch.equal(c, d) and torch.equal(c[0], c[1])
    assert [f.abs().max().item() for f in _decoder_input(model, *inputs(b=2), none)] == [0.0] * 4


def test_mean_over_present_is_a_masked_mean():
    a, b = torch.full((3, 1, 1, 1), 2.0), torch.full((3, 1, 1, 1), 4.0)
    b[2] = float("nan")
    keep = torch.tensor([[True, True, True], [True, False, False]])
    assert mean_over_present([a, b], keep).flatten().tolist() == [3.0, 2.0, 2.0]


# ---------------------------------------------------------------- TokenFusion

def test_token_exchange_substitutes_exactly_below_the_threshold():
    x = torch.arange(2 * 1 * 4 * 2, dtype=torch.float32).view(2, 4, 2)  # rows: [rgb; depth], 4 tokens
    thr = 0.02
    below = float(np.nextafter(np.float32(thr), np.float32(0)))
    scores = torch.tensor([[below, thr, 0.5, 0.0], [0.9, below, thr, 1.0]])
    out = token_exchange(x, scores, thr)
    rgb, depth = x
    assert torch.equal(out[0], torch.stack([depth[0], rgb[1], rgb[2], depth[3]]))
    assert torch.equal(out[1], torch.stack([depth[0], rgb[1], depth[2], depth[3]]))


def _constant_scores(model, rgb_logit_gap: float, depth_logit_gap: float) -> tuple[float, float]:
    """Make every TF score a constant: softmax([gap, 0])[0] per modality; returns the float32 scores."""
    with torch.no_grad():
        for scorer in model.token_fusion.scorers:
            for net, gap in zip(scorer.nets, (rgb_logit_gap, depth_logit_gap)):
                net[-1].weight.zero_()
                net[-1].bias.copy_(torch.tensor([gap, 0.0]))
    return tuple(float(torch.tensor([g, 0.0]).softmax(0)[0]) for g in (rgb_logit_gap, depth_logit_gap))


def _linear_twin(tf, alpha: float, scale: float) -> LinearFusionSegFormer:
    """The LF model with TF's weights and every attention output scaled by ``scale``."""
    lf = LinearFusionSegFormer(ModelConfig(**{**TINY, "fusion_alpha": alpha})).eval()
    state = {k: v for k, v in tf.state_dict().items() if not k.startswith("token_fusion.")}
    lf.load_state_dict(state, strict=True)
    with torch.no_grad():
        for stage in lf.encoder.stages:
            for blk in stage.blocks:
                blk.attn.proj.weight.mul_(scale)
                blk.attn.proj.bias.mul_(scale)
    return lf


@pytest.mark.parametrize("at_threshold", [True, False])
def test_tokenfusion_in_the_model_weights_tokens_and_substitutes_at_the_threshold(at_threshold):
    """Constant scores s: at/above the threshold every branch keeps its own s-weighted attention output
    (= LF with alpha 1 and attention scaled by s); just above s, every token is swapped (= LF alpha 0)."""
    tf = build(fusion="tokenfusion")
    s, s_depth = _constant_scores(tf, -2.0, -2.0)
    assert s == s_depth and 0.1 < s < 0.2
    tf.token_fusion.threshold = s if at_threshold else float(np.nextafter(np.float32(s), np.float32(1)))
    lf = _linear_twin(tf, alpha=1.0 if at_threshold else 0.0, scale=s)
    rgb, depth = inputs()
    with torch.no_grad():
        a, b = tf(rgb, depth), lf(rgb, depth)
        plain = _linear_twin(tf, alpha=1.0, scale=1.0)(rgb, depth)
    for k in ("rgb", "depth", "ensemble"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(a[k], plain[k], atol=1e-3)  # the score weighting matters
    assert torch.all(a["token_scores"] == s)


def test_tokenfusion_substitution_is_per_branch():
    """RGB scores below the threshold, depth above: only the RGB branch takes the other's tokens,
    so the RGB branch's output depends on the depth input even with LF's mixing switched off."""
    tf = build(fusion="tokenfusion")
    s_rgb, s_depth = _constant_scores(tf, -6.0, 3.0)
    assert s_rgb < tf.config.tokenfusion_threshold <= s_depth
    rgb, depth = inputs()
    with torch.no_grad():
        a, b = tf(rgb, depth), tf(rgb, depth + 1.0)
        c = tf(rgb + 1.0, depth)
    assert not torch.allclose(a["rgb"], b["rgb"])  # RGB branch receives depth tokens
    assert torch.equal(a["depth"], c["depth"])  # depth keeps its own: RGB input never reaches it


def test_token_scores_shape_range_and_rows_per_sample():
    tf = build(fusion="tokenfusion")
    rgb, depth = inputs(b=3, h=64, w=48)
    with torch.no_grad():
        out = tf(rgb, depth, PRESENT)
        one = tf(rgb[1:2], depth[1:2], PRESENT[1:2])
    # per block and branch: one score per token; tiny has one block per stage at strides 4, 8, 16, 32
    tokens = [-(-64 // s) * -(-48 // s) for s in (4, 8, 16, 32)]
    k = 2 * sum(tokens)
    scores = out["token_scores"]
    assert scores.shape == (3, k) and scores.dtype == torch.float32
    assert scores.min() >= 0 and scores.max() <= 1 and scores.std() > 0
    torch.testing.assert_close(scores[1], one["token_scores"][0], rtol=0, atol=1e-6)
    tf.train()
    out = tf(rgb, depth)
    out["token_scores"].mean().backward()  # the L1 sparsity loss trains the scorers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tf.token_fusion.parameters() if p.ndim == 2)
    tf.eval()
    s_rgb, s_depth = _constant_scores(tf, -1.0, 1.0)  # row layout: block by block, RGB then depth
    with torch.no_grad():
        row = tf(rgb, depth)["token_scores"][0]
    expected = torch.cat([torch.tensor([s_rgb] * n + [s_depth] * n) for n in tokens])
    assert torch.equal(row, expected)


def test_tokenfusion_learned_token_fills_a_missing_modality():
    tf = build(fusion="tokenfusion")
    rgb, depth = inputs(b=3)
    with torch.no_grad():
        a = tf(rgb, depth, PRESENT)
        garbage = torch.where(PRESENT[:, 1, None, None, None], depth, 1e4 * torch.randn_like(depth))
        garbage_rgb = torch.where(PRESENT[:, 0, None, None, None], rgb, torch.full_like(rgb, float("nan")))
        b = tf(garbage_rgb, garbage, PRESENT)
        tf.missing_token.add_(1.0)
        c = tf(rgb, depth, PRESENT)
    for k in ("ensemble", "rgb", "depth", "token_scores"):
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a["ensemble"][0], c["ensemble"][0])  # both present: the token is not used
    assert not torch.allclose(a["ensemble"][1], c["ensemble"][1])  # depth missing: the token stands in


def test_tokenfusion_without_token_zeroes_the_missing_input():
    tf = build(fusion="tokenfusion", missing_token=False)
    rgb, depth = inputs(b=3)
    with torch.no_grad():
        a = tf(rgb, depth, PRESENT)["ensemble"]
        b = tf(rgb, torch.zeros_like(depth), torch.tensor([[True, True], [True, True], [False, True]]))["ensemble"]
    assert torch.equal(a[1], b[1])


# ---------------------------------------------------------------- checkpoints and inference

@pytest.mark.parametrize("fusion", ["tokenfusion", "urn"])
def test_checkpoint_round_trip_and_segmenter(tmp_path, fusion):
    model = build(fusion=fusion)
    path = tmp_path / f"{fusion}.safetensors"
    save_checkpoint(path, model, class_names=list("abcde"), palette=[[i * 40, 0, 0] for i in range(5)],
                    preprocessing=Preprocessing(input_size=(32, 48), depth_norm="minmax", depth_range=(0.2, 6.0)))
    ck = load_checkpoint(path)
    assert ck.model_config == model.config and ck.model_config.fusion == fusion
    rgb, depth = inputs(b=3, h=32, w=48)
    with torch.no_grad():
        a, b = model(rgb, depth, PRESENT), ck.model(rgb, depth, PRESENT)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    seg = Segmenter(ck)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mm = rng.integers(400, 5000, (60, 80)).astype(np.uint16)
    labels = {name: seg.predict(*args) for name, args in
              (("rgbd", (image, mm)), ("rgb", (image, None)), ("depth", (None, mm)))}
    for lab in labels.values():
        assert lab.shape == (60, 80) and lab.max() < 5
    # the missing input takes the missing-modality path: RGB-only differs from RGB-D
    assert not np.array_equal(seg.logits(image, mm).numpy(), seg.logits(image, None).numpy())


@pytest.mark.parametrize("fusion", ["tokenfusion", "urn"])
def test_onnx_export_matches_torch(tmp_path, fusion):
    pytest.importorskip("onnxruntime")
    from m3l_core.export import export_onnx

    path = tmp_path / f"{fusion}.safetensors"
    save_checkpoint(path, build(fusion=fusion), class_names=list("abcde"), palette=[[i * 40, 0, 0] for i in range(5)],
                    preprocessing=Preprocessing(input_size=(32, 48), depth_norm="minmax", depth_range=(0.2, 6.0)))
    onnx_path = export_onnx(load_checkpoint(path), tmp_path / f"{fusion}.onnx")
    torch_seg, ort_seg = Segmenter(load_checkpoint(path)), Segmenter.from_checkpoint(onnx_path, device="cpu",
                                                                                     backend="onnxruntime")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mm = rng.integers(400, 5000, (60, 80)).astype(np.uint16)
    for args in ((image, mm), (image, None), (None, mm)):  # the presence mask is a graph input
        torch.testing.assert_close(ort_seg.logits(*args), torch_seg.logits(*args), rtol=0, atol=1e-4)
