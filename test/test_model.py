"""Linear Fusion SegFormer: size, missing-modality semantics, batched == reference, gradients, pretrained keys."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from m3l_core.model import (BACKBONES, LinearFusionSegFormer, ModalityLayerNorm, ModelConfig,
                            count_parameters)


def tiny(**kw) -> LinearFusionSegFormer:
    torch.manual_seed(0)
    cfg = dict(backbone="tiny", num_classes=5, decoder_dim=32, drop_path_rate=0.0)
    cfg.update(kw)
    return LinearFusionSegFormer(ModelConfig(**cfg))


def inputs(b=3, h=64, w=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randn(b, 1, h, w, generator=g)


def test_mit_b2_size_matches_paper_table4():
    lf = LinearFusionSegFormer(ModelConfig(backbone="mit_b2", num_classes=13))
    uni = LinearFusionSegFormer(ModelConfig(backbone="mit_b2", num_classes=13, modalities=("rgb",),
                                            missing_token=False))
    assert 24.70e6 <= count_parameters(lf) <= 24.80e6  # paper: 24.75M
    assert 24.70e6 <= count_parameters(uni) <= 24.76e6  # paper: 24.73M
    # The only extra parameters of LF are the second LayerNorm slots, the token and lambda.
    assert count_parameters(lf) > count_parameters(uni)


def test_encoder_is_timm_mit():
    model = tiny(backbone="mit_b0")
    from timm.models.pvt_v2 import PyramidVisionTransformerV2
    assert isinstance(model.encoder, PyramidVisionTransformerV2)
    blk = model.encoder.stages[0].blocks[0]
    assert blk.mlp.fc1.out_features == 4 * blk.mlp.fc1.in_features  # MLP ratio 4 = MiT
    assert [len(s.blocks) for s in model.encoder.stages] == list(BACKBONES["mit_b0"]["depths"])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms == []  # every LayerNorm became per-modality
    assert all(m.weight.shape[0] == 2 for m in model.modules() if isinstance(m, ModalityLayerNorm))


def test_output_shapes_and_keys():
    model = tiny().eval()
    rgb, depth = inputs(h=50, w=38)
    out = model(rgb, depth)
    assert set(out) == {"ensemble", "rgb", "depth"}
    assert all(v.shape == (3, 5, 50, 38) for v in out.values())
    uni = tiny(modalities=("depth",), missing_token=False).eval()
    out = uni(None, depth)
    assert set(out) == {"ensemble", "depth"}
    assert torch.equal(out["ensemble"], out["depth"])


@pytest.mark.parametrize("token", [True, False])
def test_absent_modality_values_never_matter_per_sample(token):
    model = tiny(missing_token=token).eval()
    rgb, depth = inputs(b=4)
    present = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    with torch.no_grad():
        a = model(rgb, depth, present)
        rgb2, depth2 = rgb.clone(), depth.clone()
        rgb2[2] = torch.randn_like(rgb2[2]) * 100  # sample 2 has no RGB
        depth2[1] = float("nan")  # samples 1 and 3 have no depth
        depth2[3] = 1e6
        b = model(rgb2, depth2, present)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and a present modality does matter
    with torch.no_grad():
        c = model(rgb, depth * 3 + 1, present)
    assert not torch.allclose(a["ensemble"][0], c["ensemble"][0])


def test_missing_token_differs_from_zero_input():
    model = tiny().eval()
    rgb, depth = inputs(b=1)
    with torch.no_grad():
        tok = model(rgb, depth, torch.tensor([[True, False]]))["ensemble"]
        zeros = model(rgb, torch.zeros_like(depth))["ensemble"]
    assert not torch.allclose(tok, zeros)


def _reference_forward(model: LinearFusionSegFormer, rgb, depth, present):
    """Straightforward per-modality computation with plain LayerNorms and explicit attention."""
    enc, alpha = model.encoder, model.config.fusion_alpha

    def ln(mod: ModalityLayerNorm, x, m):
        return F.layer_norm(x, (mod.dim,), mod.weight[m], mod.bias[m], mod.eps)

    def attention(attn, x, hw, m):
        b, n, c = x.shape
        q = attn.q(x).reshape(b, n, attn.num_heads, -1).permute(0, 2, 1, 3)
        if attn.sr is not None:
            y = attn.sr(x.permute(0, 2, 1).reshape(b, c, *hw)).reshape(b, c, -1).permute(0, 2, 1)
            y = ln(attn.norm, y, m)
        else:
            y = x
        kv = attn.kv(y).reshape(b, -1, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1) @ v
        return attn.proj(a.transpose(1, 2).reshape(b, n, c))

    xs = [rgb, depth.expand(-1, 3, -1, -1)]
    feats = [[], []]
    for si, stage in enumerate(enc.stages):
        new = []
        for m in range(2):
            x = xs[m]
            if si == 0:
                x = ln(enc.patch_embed.norm, enc.patch_embed.proj(x).permute(0, 2, 3, 1), m)
                tok = model.missing_token.view(1, 1, 1, -1)
                x = torch.where(present[:, m].view(-1, 1, 1, 1), x, tok)
            else:
                x = ln(stage.downsample.norm, stage.downsample.proj(x).permute(0, 2, 3, 1), m)
            new.append(x)
        b, h, w, c = new[0].shape
        x = [t.reshape(b, -1, c) for t in new]
        for blk in stage.blocks:
            att = [attention(blk.attn, ln(blk.norm1, x[m], m), (h, w), m) for m in range(2)]
            fused = [alpha * att[0] + (1 - alpha) * att[1], alpha * att[1] + (1 - alpha) * att[0]]
            x = [x[m] + fused[m] for m in range(2)]
            x = [x[m] + blk.mlp(ln(blk.norm2, x[m], m), (h, w)) for m in range(2)]
        xs = [ln(stage.norm, x[m], m).reshape(b, h, w, c).permute(0, 3, 1, 2) for m in range(2)]
        for m in range(2):
            feats[m].append(xs[m])
    logits = [model.decoder(feats[m]) for m in range(2)]
    wts = model.ensemble_logits.softmax(0)
    ens = wts[0] * logits[0] + wts[1] * logits[1]
    size = rgb.shape[-2:]
    up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    return {"ensemble": up(ens), "rgb": up(logits[0]), "depth": up(logits[1])}


def test_batched_forward_equals_per_modality_reference():
    model = tiny().eval()
    with torch.no_grad():
        model.ensemble_logits.copy_(torch.tensor([0.3, -0.2]))
        for mod in model.modules():  # make the two LayerNorm slots really different
            if isinstance(mod, ModalityLayerNorm):
                mod.weight.add_(torch.randn_like(mod.weight) * 0.1)
                mod.bias.add_(torch.randn_like(mod.bias) * 0.1)
    rgb, depth = inputs(b=2, h=64, w=64)
    present = torch.tensor([[True, True], [False, True]])
    with torch.no_grad():
        got = model(rgb, depth, present)
        ref = _reference_forward(model, rgb, depth, present)
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-5, rtol=0), (k, (got[k] - ref[k]).abs().max())


def test_one_backward_reaches_lambda_token_and_both_layernorm_slots():
    model = tiny().train()
    rgb, depth = inputs(b=2)
    present = torch.tensor([[True, False], [True, True]])
    out = model(rgb, depth, present)
    target = torch.randint(0, 5, (2, 64, 48))
    loss = sum(F.cross_entropy(v, target) for v in out.values())
    loss.backward()
    assert model.ensemble_logits.grad is not None and model.ensemble_logits.grad.abs().sum() > 0
    assert model.missing_token.grad is not None and model.missing_token.grad.abs().sum() > 0
    ln = model.encoder.stages[1].blocks[0].norm1
    assert ln.weight.grad[0].abs().sum() > 0 and ln.weight.grad[1].abs().sum() > 0
    groups = model.param_groups()
    ids = {name: {id(p) for p in ps} for name, ps in groups.items()}
    assert id(model.ensemble_logits) in ids["encoder_norm"] and id(model.missing_token) in ids["encoder_norm"]
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def _official_key(timm_key: str) -> str:
    """timm PVTv2 key -> the key in the official SegFormer mit_bX.pth files."""
    k = timm_key.replace("patch_embed.", "patch_embed1.")
    k = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", k)
    k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", k)
    k = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", k)
    return k.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")


def test_official_mit_state_dict_loads_strictly(tmp_path):
    from timm.models.pvt_v2 import PyramidVisionTransformerV2
    arch = BACKBONES["mit_b2"]
    src = PyramidVisionTransformerV2(num_classes=1000, mlp_ratios=(4, 4, 4, 4), **arch)
    official = {_official_key(k): v.clone() for k, v in src.state_dict().items()}
    assert "block3.5.mlp.dwconv.dwconv.weight" in official and "patch_embed4.norm.bias" in official
    assert "norm4.weight" in official and "head.weight" in official
    with torch.no_grad():
        official["block2.1.norm1.weight"].uniform_(0.5, 1.5)
    path = tmp_path / "mit_b2.pth"
    torch.save(official, path)
    model = LinearFusionSegFormer(ModelConfig(backbone="mit_b2", num_classes=13))
    model.load_pretrained(str(path))
    ln = model.encoder.stages[1].blocks[1].norm1.weight
    assert torch.equal(ln[0], official["block2.1.norm1.weight"]) and torch.equal(ln[1], ln[0])
    assert torch.equal(model.encoder.stages[2].blocks[5].mlp.dwconv.weight, official["block3.5.mlp.dwconv.dwconv.weight"])
    # A wrong architecture is refused, naming the file.
    b0 = LinearFusionSegFormer(ModelConfig(backbone="mit_b0", num_classes=13))
    with pytest.raises(ValueError, match="mit_b2.pth"):
        b0.load_pretrained(str(path))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="resnet50")
    with pytest.raises(ValueError, match="modalities"):
        ModelConfig(modalities=("rgb", "thermal"))
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({"bogus": 1})
