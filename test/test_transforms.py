"""Training augmentation and evaluation resizing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3l_core.data.transforms import (
    EvalTransform,
    TrainTransform,
    collate,
    resize_nearest,
)
from m3l_core.preprocess import Preprocessing, normalize_depth, normalize_rgb

H, W, C = 20, 24, 5
PRE = Preprocessing(input_size=(8, 10))


def coded_sample(labeled: bool = True) -> dict:
    """RGB encodes each pixel's (y, x) so a crop/flip can be traced back to the source."""
    y, x = np.mgrid[:H, :W]
    rgb = np.stack([10 * y, 10 * x, np.full_like(y, 77)], -1).astype(np.uint8)
    depth = (1.0 + 0.1 * x + 0.01 * y).astype(np.float32)
    depth[5, 7] = np.nan
    label = ((x + 2 * y) % C).astype(np.uint8)
    label[:2, :3] = 255
    return {"rgb": rgb, "depth": depth, "label": label if labeled else None, "name": "coded"}


def source_coords(rgb_n: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Invert the ImageNet normalisation of the coded RGB to get each output pixel's (y, x)."""
    x = rgb_n.numpy().transpose(1, 2, 0) * np.array(PRE.rgb_std, np.float32) + np.array(PRE.rgb_mean, np.float32)
    v = np.rint(x * 255.0).astype(int)
    return v[..., 0] // 10, v[..., 1] // 10


def test_output_shapes_and_dtypes() -> None:
    t = TrainTransform(crop_size=(16, 18), pre=PRE)
    out = t(coded_sample(), np.random.default_rng(0))
    assert out["rgb"].shape == (3, 16, 18) and out["rgb"].dtype == torch.float32
    assert out["depth"].shape == (1, 16, 18) and out["depth"].dtype == torch.float32
    assert out["label"].shape == (16, 18) and out["label"].dtype == torch.int64
    assert out["labeled"] is True and out["name"] == "coded"
    assert torch.isfinite(out["depth"]).all() and torch.isfinite(out["rgb"]).all()


def test_crop_and_flip_keep_rgb_depth_label_aligned() -> None:
    """At scale 1, every output pixel traces back to one source pixel for all three modalities."""
    sample = coded_sample()
    depth_full = normalize_depth(sample["depth"], PRE)[0]
    t = TrainTransform(crop_size=(12, 14), pre=PRE, scales=(1.0,))
    flips = set()
    for seed in range(12):
        out = t(sample, np.random.default_rng(seed))
        ys, xs = source_coords(out["rgb"])
        np.testing.assert_array_equal(out["label"].numpy(), sample["label"][ys, xs])
        np.testing.assert_allclose(out["depth"][0].numpy(), depth_full[ys, xs], atol=1e-6)
        # A crop is a contiguous window, possibly mirrored.
        assert (np.diff(ys, axis=0) == 1).all() and (ys[:, :1] == ys).all()
        step = np.diff(xs, axis=1)
        assert (step == 1).all() or (step == -1).all()
        flips.add(bool((step == -1).all()))
    assert flips == {True, False}  # both branches exercised


def test_padding_is_zero_in_normalised_space_and_ignore_in_label() -> None:
    sample = coded_sample()
    t = TrainTransform(crop_size=(16, 16), pre=PRE, scales=(0.5,), flip=False)
    out = t(sample, np.random.default_rng(0))
    # 20x24 at 0.5 -> 10x12, centred in 16x16: 3 rows above/below, 2 columns left/right.
    pad = np.ones((16, 16), bool)
    pad[3:13, 2:14] = False
    assert (out["rgb"].numpy()[:, pad] == 0).all() and (out["depth"].numpy()[:, pad] == 0).all()
    assert (out["label"].numpy()[pad] == 255).all()
    inner_label = out["label"].numpy()[3:13, 2:14]
    np.testing.assert_array_equal(inner_label, resize_nearest(sample["label"], (10, 12)))
    assert (out["rgb"].numpy()[:, ~pad] != 0).any()
    # Interior RGB is the normalised bilinear downscale (not zero, not raw).
    ys, xs = source_coords(out["rgb"][:, 3:13, 2:14])
    assert ys.min() >= 0 and xs.max() <= W - 1


def test_scaling_keeps_invalid_depth_invalid_and_labels_exact() -> None:
    sample = coded_sample()
    pre = Preprocessing(depth_norm="metric", depth_range=(0.0, 10.0))
    t = TrainTransform(crop_size=(2 * H, 2 * W), pre=pre, scales=(2.0,), flip=False)
    out = t(sample, np.random.default_rng(0))
    d = out["depth"][0].numpy()
    assert (d == 0).sum() == 4  # one NaN pixel -> a 2x2 block, never blended into neighbours
    np.testing.assert_array_equal(np.argwhere(d == 0), [[10, 14], [10, 15], [11, 14], [11, 15]])
    assert set(np.unique(out["label"].numpy())) <= set(np.unique(sample["label"]).tolist())
    np.testing.assert_array_equal(out["label"].numpy(), resize_nearest(sample["label"], (2 * H, 2 * W)))


def test_unlabeled_sample_gives_all_ignore() -> None:
    out = TrainTransform(crop_size=(16, 16), pre=PRE)(coded_sample(labeled=False), np.random.default_rng(1))
    assert out["labeled"] is False and (out["label"] == 255).all() and out["label"].shape == (16, 16)


def test_seeded_rng_is_deterministic_and_draws_differ() -> None:
    t = TrainTransform(crop_size=(12, 12), pre=PRE)
    s = coded_sample()
    a, b = t(s, np.random.default_rng([0, 5, 3])), t(s, np.random.default_rng([0, 5, 3]))
    for k in ("rgb", "depth", "label"):
        assert torch.equal(a[k], b[k])
    outs = [t(s, np.random.default_rng([0, step, 3]))["rgb"] for step in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_collate_batches_labeled_and_unlabeled_samples() -> None:
    t = TrainTransform(crop_size=(10, 10), pre=PRE)
    rng = np.random.default_rng(7)
    batch = collate([t(coded_sample(), rng), t(coded_sample(labeled=False), rng)])
    assert batch["rgb"].shape == (2, 3, 10, 10) and batch["label"].shape == (2, 10, 10)
    assert batch["labeled"].tolist() == [True, False] and batch["name"] == ["coded", "coded"]


def test_eval_transform_sizes() -> None:
    s = coded_sample()
    out = EvalTransform(PRE)(s)
    assert out["rgb"].shape == (3, 8, 10) and out["depth"].shape == (1, 8, 10)
    assert out["label"].dtype == torch.int64 and out["label"].shape == (H, W)
    np.testing.assert_array_equal(out["label"].numpy(), s["label"])
    np.testing.assert_allclose(out["depth"].numpy(), normalize_depth(resize_nearest(s["depth"], (8, 10)), PRE))
    same = EvalTransform(Preprocessing(input_size=(H, W)))(s)
    np.testing.assert_allclose(same["rgb"].numpy(), normalize_rgb(s["rgb"], PRE), atol=1e-6)
    unl = EvalTransform(PRE)(coded_sample(labeled=False))
    assert unl["labeled"] is False and (unl["label"] == 255).all() and unl["label"].shape == (H, W)
    # Samples of different original sizes keep their labels as a list.
    small = {**s, "rgb": s["rgb"][:10], "depth": s["depth"][:10], "label": s["label"][:10]}
    batch = collate([out, EvalTransform(PRE)(small)])
    assert batch["rgb"].shape == (2, 3, 8, 10) and isinstance(batch["label"], list)


def test_bad_samples_and_configs_are_rejected() -> None:
    s = coded_sample()
    with pytest.raises(ValueError, match="coded.*label"):
        TrainTransform(crop_size=(8, 8), pre=PRE)({**s, "label": s["label"][:5]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(crop_size=(0, 8), pre=PRE)
    with pytest.raises(ValueError, match="scales"):
        TrainTransform(crop_size=(8, 8), pre=PRE, scales=())


@pytest.mark.parametrize("align,norm", [("center", "minmax"), ("corner", "minmax_all")])
def test_eval_transform_is_the_inference_input_path(align, norm) -> None:
    """Evaluation feeds the model exactly what Segmenter's preprocessing does, reference options included."""
    from m3l_core.preprocess import depth_input, rgb_input

    pre = Preprocessing(input_size=(8, 10), nearest_align=align, depth_norm=norm)
    s = coded_sample()
    s["depth"] = s["depth"].copy()
    s["depth"][0, :5] = np.nan  # invalid pixels: minmax_all takes its bounds over the full frame
    out = EvalTransform(pre)(s)
    np.testing.assert_array_equal(out["rgb"].numpy(), rgb_input(s["rgb"], pre))
    np.testing.assert_array_equal(out["depth"].numpy(), depth_input(s["depth"], pre))


def test_train_transform_uses_the_configured_nearest_alignment() -> None:
    """At scale 0.5, 'corner' (cv2, the reference) keeps source rows/columns 0, 2, 4...; 'center' 1, 3, 5..."""
    s = coded_sample()
    for align, first in (("corner", 0), ("center", 1)):
        pre = Preprocessing(input_size=(8, 10), nearest_align=align)
        t = TrainTransform(crop_size=(H // 2, W // 2), pre=pre, scales=(0.5,), flip=False)
        lab = t(s, np.random.default_rng(0))["label"].numpy()
        np.testing.assert_array_equal(lab, s["label"][first::2, first::2])
