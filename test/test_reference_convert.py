"""Converting the authors' checkpoints: exact name mapping, the reference's forward, safe loading, CLI."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3l_core.checkpoint import load_checkpoint
from m3l_core.convert_reference import (ConversionError, convert_file, convert_state, main, read_reference,
                                        reference_key_map, to_reference_state)
from m3l_core.model import BACKBONES, LinearFusionSegFormer, ModelConfig, ModalityLayerNorm
from m3l_core.preprocess import Preprocessing

CFG = dict(backbone="tiny", num_classes=5, decoder_dim=32, drop_path_rate=0.0, fusion_alpha=0.8)
NAMES = [f"c{i}" for i in range(5)]


def random_model(seed: int = 0, **kw) -> LinearFusionSegFormer:
    """A tiny model whose every tensor (norm affines, BN statistics, alpha, token) is random."""
    torch.manual_seed(seed)
    model = LinearFusionSegFormer(ModelConfig(**{**CFG, "token_init": "randn", **kw}))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, ModalityLayerNorm):
                mod.weight.normal_(1.0, 0.3)
                mod.bias.normal_(0.0, 0.3)
        bn = model.decoder.fuse[1]
        bn.weight.normal_(1.0, 0.3)
        bn.bias.normal_(0.0, 0.3)
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(123)
        model.ensemble_logits.normal_(0.0, 1.0)
    return model.eval()


# --- the reference's equations, written out (linearfusemaskedconsmixbatch), on reference names ----


def _ln(sd, x, name, i):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.ln_{i}.weight"], sd[f"{name}.ln_{i}.bias"], eps=1e-6)


def _lin(sd, x, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _attention(sd, x, name, i, hw, heads, sr):
    b, n, c = x.shape
    q = _lin(sd, x, f"{name}.q.module").reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    if sr > 1:
        x = x.permute(0, 2, 1).reshape(b, c, *hw)
        x = F.conv2d(x, sd[f"{name}.sr.module.weight"], sd[f"{name}.sr.module.bias"], stride=sr)
        x = _ln(sd, x.reshape(b, c, -1).permute(0, 2, 1), f"{name}.norm", i)
    kv = _lin(sd, x, f"{name}.kv.module").reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ kv[0].transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
    return _lin(sd, (attn @ kv[1]).transpose(1, 2).reshape(b, n, c), f"{name}.proj.module")


def _mlp(sd, x, name, hw):
    x = _lin(sd, x, f"{name}.fc1.module")
    b, n, c = x.shape
    x = x.transpose(1, 2).reshape(b, c, *hw)
    x = F.conv2d(x, sd[f"{name}.dwconv.dwconv.weight"], sd[f"{name}.dwconv.dwconv.bias"], padding=1, groups=c)
    return _lin(sd, F.gelu(x.flatten(2).transpose(1, 2)), f"{name}.fc2.module")


def _decoder(sd, feats):
    c1 = feats[0]
    outs = []
    for k in (4, 3, 2, 1):
        f = feats[k - 1]
        y = _lin(sd, f.flatten(2).transpose(1, 2), f"decoder.linear_c{k}.proj").permute(0, 2, 1)
        y = y.reshape(f.shape[0], -1, *f.shape[-2:])
        outs.append(F.interpolate(y, size=c1.shape[-2:], mode="bilinear", align_corners=False) if k > 1 else y)
    x = F.conv2d(torch.cat(outs, 1), sd["decoder.linear_fuse.conv.weight"])
    p = "decoder.linear_fuse.bn"
    x = F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                     training=False, eps=1e-5)
    return F.conv2d(F.relu(x), sd["decoder.linear_pred.weight"], sd["decoder.linear_pred.bias"])


def reference_forward(sd, cfg: ModelConfig, rgb, depth, masking_branch=None):
    """Ensemble logits as the reference computes them; ``masking_branch`` 0 masks RGB, 1 depth (all tokens)."""
    arch = BACKBONES[cfg.backbone]
    ratio = cfg.fusion_alpha
    b, _, h, w = rgb.shape
    xs = [rgb, depth.expand(-1, 3, -1, -1)]
    feats = [[], []]
    for s in range(1, 5):
        pe = f"encoder.patch_embed{s}"
        k, stride = (7, 4) if s == 1 else (3, 2)
        ys = [F.conv2d(x, sd[f"{pe}.proj.module.weight"], sd[f"{pe}.proj.module.bias"], stride=stride,
                       padding=k // 2) for x in xs]
        hw = tuple(ys[0].shape[-2:])
        ys = [_ln(sd, y.flatten(2).transpose(1, 2), f"{pe}.norm", i) for i, y in enumerate(ys)]
        if s == 1 and masking_branch is not None:  # masking_ratio 1.0: every token of that branch
            ys[masking_branch] = sd[f"{pe}.mask_token"].expand_as(ys[masking_branch]).clone()
        for j in range(arch["depths"][s - 1]):
            blk = f"encoder.block{s}.{j}"
            a = [_attention(sd, _ln(sd, y, f"{blk}.norm1", i), f"{blk}.attn", i, hw, arch["num_heads"][s - 1],
                            (8, 4, 2, 1)[s - 1]) for i, y in enumerate(ys)]
            a = [ratio * a[0] + (1 - ratio) * a[1], (1 - ratio) * a[0] + ratio * a[1]]  # LinearFuse
            ys = [y + a_ for y, a_ in zip(ys, a)]
            ys = [y + _mlp(sd, _ln(sd, y, f"{blk}.norm2", i), f"{blk}.mlp", hw) for i, y in enumerate(ys)]
        ys = [_ln(sd, y, f"encoder.norm{s}", i) for i, y in enumerate(ys)]
        xs = [y.reshape(b, *hw, -1).permute(0, 3, 1, 2) for y in ys]
        for i in range(2):
            feats[i].append(xs[i])
    pred = [_decoder(sd, feats[0]), _decoder(sd, feats[1])]
    alpha = sd["alpha"].softmax(0)
    ens = alpha[0] * pred[0] + alpha[1] * pred[1]
    return F.interpolate(ens, size=(h, w), mode="bilinear", align_corners=True)


# --- tests ---------------------------------------------------------------------------------------


def test_key_map_covers_every_tensor_once_and_names_the_reference_layers():
    cfg = ModelConfig(**CFG)
    km = reference_key_map(ModelConfig(**{**CFG, "backbone": "mit_b2"}))
    assert "encoder.block3.5.attn.sr.module.weight" in km and "encoder.block4.2.attn.sr.module.weight" not in km
    assert km["encoder.patch_embed1.norm.ln_1.weight"] == ("encoder.patch_embed.norm.weight", 1)  # ln_1 = depth
    assert km["encoder.block1.0.mlp.dwconv.dwconv.weight"] == ("encoder.stages.0.blocks.0.mlp.dwconv.weight", None)
    assert km["decoder.linear_fuse.bn.running_var"] == ("decoder.fuse.1.running_var", None)
    model = LinearFusionSegFormer(cfg)
    ln_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, ModalityLayerNorm)
                 for p in ("weight", "bias")}
    slots = list(reference_key_map(cfg).values())
    assert len(slots) == len(set(slots))  # no project tensor (slot) is filled twice
    assert len(slots) == sum(2 if k in ln_params else 1 for k in model.state_dict())  # ... and none is left out


def test_reference_naming_converts_back_bit_exactly():
    model = random_model(1)
    ref = to_reference_state(model)
    assert "encoder.patch_embed1.mask_token" in ref and "alpha" in ref
    state = convert_state(ref, model.config)
    own = model.state_dict()
    assert state.keys() == own.keys()
    for k in own:
        assert own[k].dtype == state[k].dtype and torch.equal(own[k], state[k]), k


@pytest.mark.parametrize("condition", ["rgbd", "rgb", "depth"])
def test_converted_model_matches_the_reference_forward(tmp_path, condition):
    ref = to_reference_state(random_model(2))
    ref["encoder.patch_embed2.mask_token"] = torch.randn(32)  # unused by the reference; must be accepted
    path = tmp_path / "ref.pth"
    torch.save({"epoch": 3, "model_state_dict": ref}, path)
    out = tmp_path / "model.safetensors"
    convert_file(path, out, config=ModelConfig(**CFG), preprocessing=Preprocessing(input_size=(40, 56)),
                 class_names=NAMES)
    ckpt = load_checkpoint(out)
    cfg = ckpt.model_config
    assert cfg.align_corners and cfg.layernorm_eps == 1e-6
    assert ckpt.preprocessing.depth_norm == "minmax_all" and ckpt.preprocessing.nearest_align == "corner"
    g = torch.Generator().manual_seed(3)
    rgb, depth = torch.randn(2, 3, 40, 56, generator=g), torch.rand(2, 1, 40, 56, generator=g)
    masking = {"rgbd": None, "rgb": 1, "depth": 0}[condition]
    with torch.no_grad():
        expect = reference_forward(ref, cfg, rgb, depth, masking)
        got = ckpt.model(rgb if condition != "depth" else None, depth if condition != "rgb" else None)["ensemble"]
    assert got.shape == expect.shape == (2, 5, 40, 56)
    assert (got - expect).abs().max().item() <= 1e-5


def test_project_defaults_differ_from_the_reference_forward():
    """The check above can fail: the project's own settings do not reproduce the reference."""
    model = random_model(2)
    ref = to_reference_state(model)
    g = torch.Generator().manual_seed(3)
    rgb, depth = torch.randn(1, 3, 40, 56, generator=g), torch.rand(1, 1, 40, 56, generator=g)
    with torch.no_grad():
        diff = (model(rgb, depth)["ensemble"] - reference_forward(ref, model.config, rgb, depth)).abs().max().item()
    assert diff > 1e-3


class _Marker:
    """A pickle that would create a file when loaded by plain pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    state = to_reference_state(random_model(0))
    with open(evil, "wb") as f:
        pickle.dump({"model": state, "hook": _Marker(marker)}, f)
    with pytest.raises(ConversionError, match="refused"):
        read_reference(evil)
    assert main([str(evil), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "o.safetensors"),
                 "--class-names", ",".join(NAMES)]) == 1
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_truncated_and_foreign_files_are_refused_with_the_file_named(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": to_reference_state(random_model(0))}, good)
    data = good.read_bytes()
    cases = {"three_bytes.pth": b"abc", "half.pth": data[: len(data) // 2], "text.pth": b"not a checkpoint\n" * 20}
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(ConversionError, match=f"{name}: refused"):
            read_reference(path)
        assert main([str(path), "--config", str(_config(tmp_path)), "--out", str(tmp_path / "o.safetensors"),
                     "--class-names", ",".join(NAMES)]) == 1


def test_foreign_layouts_are_refused_with_the_key_named(tmp_path):
    model = random_model(0)
    ref = to_reference_state(model)
    cfg = model.config
    with pytest.raises(ConversionError, match="unknown reference tensor.*encoder.extra.weight"):
        convert_state({**ref, "encoder.extra.weight": torch.zeros(1)}, cfg)
    with pytest.raises(ConversionError, match="missing reference tensor.*encoder.block2.0.norm1.ln_1.bias"):
        convert_state({k: v for k, v in ref.items() if k != "encoder.block2.0.norm1.ln_1.bias"}, cfg)
    bad = dict(ref, **{"decoder.linear_pred.weight": torch.zeros(7, 32, 1, 1)})
    with pytest.raises(ConversionError, match="decoder.linear_pred.weight.*shape"):
        convert_state(bad, cfg)
    with pytest.raises(ConversionError, match="missing_token: false"):
        convert_state(ref, ModelConfig(**{**CFG, "missing_token": False}))
    for obj, match in ((torch.zeros(3), "expected a state dict"), ({"optimizer": {"lr": 1.0}}, "expected a state dict"),
                       ({"student": 1}, "expected a state dict")):
        p = tmp_path / "x.pth"
        torch.save(obj, p)
        with pytest.raises(ConversionError, match=match):
            read_reference(p)
    snap = {**{f"student.{k}": v for k, v in ref.items()}, **{f"teacher.{k}": v + 1 for k, v in ref.items()}}
    p = tmp_path / "snap.pth"
    torch.save({"model_state_dict": snap}, p)
    with pytest.raises(ConversionError, match="--branch"):
        read_reference(p)
    teacher = read_reference(p, branch="teacher")
    assert torch.equal(teacher["alpha"], ref["alpha"] + 1)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_m3l.yaml"
    path.write_text("framework: m3l\ndata: {crop_size: [40, 56]}\n"
                    "model: {backbone: tiny, num_classes: 5, decoder_dim: 32, missing_token: true}\n")
    return path


def test_cli_writes_a_checkpoint_segmenter_runs(tmp_path):
    from m3l_core.inference import Segmenter

    ref = to_reference_state(random_model(4))
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, path)
    out = tmp_path / "model.safetensors"
    assert main([str(path), "--config", str(_config(tmp_path)), "--out", str(out),
                 "--class-names", ",".join(NAMES)]) == 0
    seg = Segmenter.from_checkpoint(out, backend="torch")
    assert seg.class_names == NAMES and seg.model.config.align_corners
    rng = np.random.default_rng(0)
    labels = seg.predict(rgb=rng.integers(0, 256, (30, 44, 3), dtype=np.uint8),
                         depth=rng.integers(0, 5000, (30, 44)).astype(np.uint16))
    assert labels.shape == (30, 44) and labels.min() >= 0 and labels.max() < 5
    # usage errors: 2; a file that is not a reference checkpoint: 1
    assert main([str(path), "--config", str(tmp_path / "nope.yaml"), "--out", str(out)]) == 2
    assert main([str(tmp_path / "nope.pth"), "--config", str(_config(tmp_path)), "--out", str(out),
                 "--class-names", ",".join(NAMES)]) == 2
    assert main([str(path), "--config", str(_config(tmp_path)), "--out", str(out), "--class-names", "a,b"]) == 2
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert main([str(junk), "--config", str(_config(tmp_path)), "--out", str(out),
                 "--class-names", ",".join(NAMES)]) == 1
