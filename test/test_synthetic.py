"""The synthetic RGB-D generator: determinism, sensor model, complementary modalities, folder output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from m3l_core.data import synthetic as S
from m3l_core.data.folder import SPLITS, load_classes

H, W = 48, 64
REPO = Path(__file__).resolve().parents[1]


def _frames(seeds, height=H, width=W):
    return [S.render_frame(np.random.default_rng(s), height, width) for s in seeds]


def test_constants_are_consistent():
    assert len(S.CLASS_NAMES) >= 8
    assert len(S.PALETTE) == len(S.CLASS_NAMES)
    assert len(set(S.PALETTE)) == len(S.PALETTE)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in S.PALETTE)
    assert S.IGNORE_INDEX == 255
    assert set(S.CLASS_CUES) == set(S.CLASS_NAMES)
    assert set(S.CLASS_CUES.values()) == {"both", "depth", "rgb"}
    # The module docstring's table says the same as the data.
    rows = [line.split() for line in S.__doc__.splitlines()]
    table = {r[1]: r[2].strip("*") for r in rows if len(r) > 2 and r[0].isdigit()}
    assert table == S.CLASS_CUES
    assert [int(r[0]) for r in rows if len(r) > 2 and r[0].isdigit()] == list(range(len(S.CLASS_NAMES)))


def test_frame_shapes_dtypes_and_label_range():
    f = S.render_frame(np.random.default_rng(0), H, W)
    assert set(f) == {"rgb", "depth", "label", "name"} and f["name"] == ""
    assert f["rgb"].shape == (H, W, 3) and f["rgb"].dtype == np.uint8
    assert f["depth"].shape == (H, W) and f["depth"].dtype == np.float32
    assert f["label"].shape == (H, W) and f["label"].dtype == np.uint8
    assert f["label"].max() < len(S.CLASS_NAMES)
    # A non-square, odd size works too.
    g = S.render_frame(np.random.default_rng(0), 37, 53)
    assert g["rgb"].shape == (37, 53, 3) and g["depth"].shape == g["label"].shape == (37, 53)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b = _frames([7, 7])
    c = _frames([8])[0]
    assert a["rgb"].tobytes() == b["rgb"].tobytes()
    assert a["depth"].tobytes() == b["depth"].tobytes()  # NaN patterns included
    assert a["label"].tobytes() == b["label"].tobytes()
    assert not np.array_equal(a["rgb"], c["rgb"])
    t1 = list(S.trajectory(3, 3, H, W))
    t2 = list(S.trajectory(3, 3, H, W))
    t3 = list(S.trajectory(4, 3, H, W))
    for x, y in zip(t1, t2):
        assert x["rgb"].tobytes() == y["rgb"].tobytes() and x["depth"].tobytes() == y["depth"].tobytes()
    assert not np.array_equal(t1[0]["rgb"], t3[0]["rgb"])


def test_all_classes_appear_over_a_few_frames():
    seen = set()
    for f in _frames(range(10)):
        seen |= set(np.unique(f["label"]).tolist())
    assert len(seen) >= 8, [S.CLASS_NAMES[i] for i in sorted(seen)]


def test_depth_is_noisy_positive_and_has_holes():
    cfg = S.SceneConfig()
    nan_frac, near_err, far_err = [], [], []
    edge = np.zeros(2)  # invalid, total pixels near depth edges
    flat = np.zeros(2)  # the same on smooth surfaces in range
    for s in range(6):
        rng = np.random.default_rng(s)
        scene = S.make_scene(rng, cfg)
        cam = S.random_camera(rng, scene, 96, 128, cfg)
        r = S.render_scene(scene, cam, 96, 128, rng, cfg)
        d, z = r.depth, r.depth_clean
        valid = np.isfinite(d)
        nan_frac.append(1 - valid.mean())
        assert np.all(d[valid] > 0) and np.all(d[valid] <= cfg.depth_max + 0.5)
        err = d - z
        near_err.append(err[valid & (z < 2.0)])
        far_err.append(err[valid & (z > 3.5)])
        # Depth edges lose more pixels than smooth surfaces.
        jump = np.zeros_like(valid)
        jump[:, 1:] |= np.abs(np.diff(z, axis=1)) > 0.2
        jump[1:] |= np.abs(np.diff(z, axis=0)) > 0.2
        band = cv2.dilate(jump.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        smooth = ~band & (z < cfg.depth_far_start)
        edge += [(~valid & band).sum(), band.sum()]
        flat += [(~valid & smooth).sum(), smooth.sum()]
    assert 0.005 < np.mean(nan_frac) < 0.4
    assert min(nan_frac) > 0  # every frame has holes
    near, far = np.concatenate(near_err), np.concatenate(far_err)
    assert abs(near.mean()) < 0.01
    assert far.std() > 2.0 * near.std() > 0  # noise grows with distance
    assert edge[1] > 100 and flat[1] > 1000
    assert edge[0] / edge[1] > 3 * flat[0] / flat[1]


def test_hole_rate_controls_blob_holes():
    quiet = dict(edge_dropout=0.0, speckle_rate=0.0, depth_far_start=20.0, depth_max=30.0, grazing_deg=89.9)

    def nan_fraction(cfg):
        fr = [S.render_frame(np.random.default_rng(s), 96, 128, cfg)["depth"] for s in range(8)]
        return float(np.mean([np.isnan(d).mean() for d in fr])), fr

    none, _ = nan_fraction(S.SceneConfig(hole_rate=0.0, **quiet))
    some, frames = nan_fraction(S.SceneConfig(hole_rate=0.05, **quiet))
    assert none < 0.01
    assert 0.02 < some - none < 0.1
    # Holes are blobs, not scattered pixels: most NaN pixels have a NaN neighbour on each side.
    holes = np.isnan(frames[0])
    inner = holes[1:-1, 1:-1] & holes[:-2, 1:-1] & holes[2:, 1:-1] & holes[1:-1, :-2] & holes[1:-1, 2:]
    assert inner.sum() > 0.3 * holes.sum()


def _plane_distance(r: S.Rendered) -> np.ndarray:
    """Distance of each back-projected (noisy) depth point to the plane its instance rests on or against."""
    cam, h, w = r.camera, *r.depth.shape
    K = cam.K
    uu, vv = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones((h, w))], -1) @ cam.rotation.T
    pts = cam.position + r.depth[..., None] * rays
    support = r.instance_support()
    out = np.full((h, w), np.nan)
    for inst in np.unique(r.instance):
        if inst == 5:  # ceiling
            axis, value = 2, r.scene.size[2]
        elif inst < 5:
            axis = inst // 2
            value = r.scene.size[axis] if inst % 2 else 0.0
        else:
            axis, value = support[inst]
        m = r.instance == inst
        out[m] = np.abs(pts[..., axis][m] - value)
    return out


def _balanced_accuracy(a: np.ndarray, b: np.ndarray, bins) -> float:
    """In-sample balanced accuracy of the Bayes classifier on a histogram of the feature."""
    ha = np.histogramdd(a, bins=bins)[0] if a.ndim > 1 else np.histogram(a, bins=bins)[0]
    hb = np.histogramdd(b, bins=bins)[0] if b.ndim > 1 else np.histogram(b, bins=bins)[0]
    pa, pb = ha / ha.sum(), hb / hb.sum()
    return float(0.5 * np.maximum(pa, pb).sum())


def test_modalities_complement_each_other():
    """Depth-cue classes look like their surroundings but stand off them; RGB-cue classes the reverse."""
    cfg = S.SceneConfig()
    n = len(S.CLASS_NAMES)
    colour = {c: [] for c in range(n)}
    dist = {c: [] for c in range(n)}
    for s in range(40):
        rng = np.random.default_rng(1000 + s)
        scene = S.make_scene(rng, cfg)
        r = S.render_scene(scene, S.random_camera(rng, scene, H, W, cfg), H, W, rng, cfg)
        d = _plane_distance(r)
        for c in range(n):
            m = (r.label == c) & np.isfinite(d)
            colour[c].append(r.rgb[m].astype(float))
            dist[c].append(d[m])
    colour = {c: np.concatenate(v) for c, v in colour.items()}
    dist = {c: np.concatenate(v) for c, v in dist.items()}
    cls = {name: i for i, name in enumerate(S.CLASS_NAMES)}
    surround = {"table": "floor", "cabinet": "wall", "rug": "floor", "poster": "wall",
                "chair": "floor", "box": "floor"}
    colour_bins = [np.linspace(0, 256, 9)] * 3
    dist_bins = np.linspace(0, 3, 61)
    for name, other in surround.items():
        a, b = cls[name], cls[other]
        assert len(dist[a]) > 200, f"{name} too rare to measure"
        acc_rgb = _balanced_accuracy(colour[a], colour[b], colour_bins)
        acc_geo = _balanced_accuracy(dist[a], dist[b], dist_bins)
        cue = S.CLASS_CUES[name]
        if cue == "depth":
            # Colour statistics overlap the surroundings (two halves of the floor itself score ~0.57).
            assert acc_rgb < 0.8, (name, acc_rgb)
            assert acc_geo > 0.95, (name, acc_geo)
            assert np.median(dist[a]) > 0.25  # stands well off the floor / wall
        elif cue == "rgb":
            assert acc_rgb > 0.9, (name, acc_rgb)
            assert acc_geo < 0.6, (name, acc_geo)  # coplanar: depth cannot tell
            assert abs(np.median(dist[a]) - np.median(dist[b])) < 0.01
        else:
            assert acc_rgb > 0.9 and acc_geo > 0.9, (name, acc_rgb, acc_geo)


def test_trajectory_is_smooth_and_moves():
    frames = list(S.trajectory(5, 20, H, W))
    assert [f["name"] for f in frames] == [f"{i:06d}" for i in range(20)]
    iid = _frames(range(100, 110))

    def rgb_diff(a, b):
        return np.abs(a["rgb"].astype(float) - b["rgb"].astype(float)).mean()

    def depth_diff(a, b):
        both = np.isfinite(a["depth"]) & np.isfinite(b["depth"])
        return np.abs(a["depth"][both] - b["depth"][both]).mean()

    consecutive = np.mean([rgb_diff(a, b) for a, b in zip(frames, frames[1:])])
    random_pairs = np.mean([rgb_diff(a, b) for a, b in zip(iid, iid[1:])])
    assert consecutive < 0.25 * random_pairs, (consecutive, random_pairs)
    d_cons = np.mean([depth_diff(a, b) for a, b in zip(frames, frames[1:])])
    d_rand = np.mean([depth_diff(a, b) for a, b in zip(iid, iid[1:])])
    assert d_cons < 0.25 * d_rand, (d_cons, d_rand)
    # The camera really moves: the end of the path differs more than neighbours do.
    assert rgb_diff(frames[0], frames[-1]) > 1.5 * consecutive
    label_agree = np.mean([(a["label"] == b["label"]).mean() for a, b in zip(frames, frames[1:])])
    assert label_agree > 0.9


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="room_x"):
        S.SceneConfig(room_x=(6.0, 4.0))
    with pytest.raises(ValueError, match="hole_rate"):
        S.SceneConfig(hole_rate=2.0)
    with pytest.raises(ValueError, match="unknown split"):
        S.write_folder_dataset("/nonexistent", counts={"training": 1}, height=H, width=W, seed=0)
    cfg = S.SceneConfig(room_x=[5, 5], num_posters=[0, 0])  # YAML lists are accepted
    assert cfg.room_x == (5, 5)
    f = S.render_frame(np.random.default_rng(0), H, W, cfg)
    assert S.CLASS_NAMES.index("poster") not in f["label"]


def test_cli_writes_readable_folder_dataset(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "m3l_core.data.synthetic", "--out", str(out), "--train-labeled", "2",
           "--train-unlabeled", "3", "--val", "1", "--test", "1", "--height", "40", "--width", "56",
           "--seed", "11", "--no-progress"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "wrote 7 frames" in res.stdout

    classes = load_classes(out / "classes.yaml")
    assert classes.names == list(S.CLASS_NAMES)
    assert [tuple(c) for c in classes.palette] == list(S.PALETTE)
    assert classes.ignore_index == 255

    splits = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train_labeled": 2, "train_unlabeled": 3, "val": 1, "test": 1}
    names = [n for v in splits.values() for n in v]
    assert len(set(names)) == len(names) == 7
    assert len(list((out / "rgb").glob("*.png"))) == 7
    assert len(list((out / "depth").glob("*.png"))) == 7
    assert sorted(p.stem for p in (out / "labels").glob("*.png")) == sorted(
        splits["train_labeled"] + splits["val"] + splits["test"])

    # Files round-trip to the generated arrays: RGB order, 16-bit millimetres, class ids.
    for split in SPLITS:
        for i, name in enumerate(splits[split]):
            ref = S.render_frame(S.frame_rng(11, split, i), 40, 56)
            bgr = cv2.imread(str(out / "rgb" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(bgr[..., ::-1], ref["rgb"])
            mm = cv2.imread(str(out / "depth" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert mm.dtype == np.uint16 and mm.shape == (40, 56)
            valid = np.isfinite(ref["depth"])
            assert np.array_equal(mm > 0, valid)
            assert np.abs(mm[valid] / 1000.0 - ref["depth"][valid]).max() <= 0.0005 + 1e-6
            if split != "train_unlabeled":
                lab = cv2.imread(str(out / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
                assert lab.dtype == np.uint8 and np.array_equal(lab, ref["label"])


def test_split_counts_do_not_change_other_splits(tmp_path):
    S.write_folder_dataset(tmp_path / "a", counts={"train_labeled": 1, "val": 1}, height=32, width=32,
                           seed=2, progress=False)
    S.write_folder_dataset(tmp_path / "b", counts={"train_labeled": 1, "val": 2, "test": 1}, height=32,
                           width=32, seed=2, progress=False)
    for name in ("train_labeled_000000", "val_000000"):
        for sub in ("rgb", "depth", "labels"):
            assert (tmp_path / "a" / sub / f"{name}.png").read_bytes() == (tmp_path / "b" / sub / f"{name}.png").read_bytes()
    assert (tmp_path / "a" / "splits" / "test.txt").read_text() == ""


def test_cli_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse usage errors exit 2
        S.main(["--out", str(tmp_path / "x"), "--val", "-1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        S.main(["--out", str(tmp_path / "x"), "--height", "4"])
    assert e.value.code == 2 and "at least 8x8" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert S.main(["--out", str(blocker / "data"), "--train-labeled", "1", "--train-unlabeled", "0", "--val", "0",
                   "--test", "0", "--height", "16", "--width", "16", "--no-progress"]) == 1
    assert "cannot write" in capsys.readouterr().err


def _objects(scene: S.Scene, label: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lo, hi) bounds of every object with ``label``, its parts merged."""
    parts: dict[int, list[S.Box]] = {}
    for b in scene.boxes:
        if b.label == label:
            parts.setdefault(b.obj, []).append(b)
    return [(np.min([b.lo for b in bs], 0), np.max([b.hi for b in bs], 0)) for bs in parts.values()]


def test_object_sizes_follow_the_size_table():
    """The layout draws every object from ``SIZES``: bounds, heights and clearances hold in every scene."""
    sizes, eps = S.SIZES, 1e-9
    within = lambda v, lo_hi: lo_hi[0] - eps <= v <= lo_hi[1] + eps  # noqa: E731
    seen = dict.fromkeys(("cabinet", "table", "chair", "box", "rug", "poster"), 0)
    for seed in range(25):
        scene = S.make_scene(np.random.default_rng(seed))
        lx, ly, lz = scene.size
        for lo, hi in _objects(scene, S.CABINET):
            ext = hi - lo
            thin = int(np.argmin(ext[:2]))  # the axis off the wall
            assert within(ext[thin], sizes["cabinet"]["depth"])
            assert within(ext[1 - thin], sizes["cabinet"]["width"])
            assert within(ext[2], sizes["cabinet"]["height"]) and hi[2] <= lz - sizes["cabinet"]["ceiling"] + eps
            seen["cabinet"] += 1
        for lo, hi in _objects(scene, S.TABLE):
            ext = hi - lo
            assert within(ext[2], sizes["table"]["height"]) and lo[2] == 0.0
            assert min(lo[0], lo[1], lx - hi[0], ly - hi[1]) >= sizes["table"]["clearance"] - eps
            seen["table"] += 1
        for lo, hi in _objects(scene, S.CHAIR):
            ext = hi - lo
            assert within(ext[0], sizes["chair"]["width"]) and ext[0] == pytest.approx(ext[1])
            seen["chair"] += 1
        for lo, hi in _objects(scene, S.BOX):
            ext = hi - lo
            for k, key in enumerate(("width", "depth", "height")):
                assert within(ext[k], sizes["box"][key])
            seen["box"] += 1
        for d in scene.decals:
            u0, v0, u1, v1 = d.rect
            kind = "rug" if d.label == S.RUG else "poster"
            assert within(u1 - u0, sizes[kind]["width"])
            if kind == "rug":
                assert within(v1 - v0, sizes["rug"]["depth"])
            else:
                assert v1 <= lz - sizes["poster"]["ceiling"] + eps
            seen[kind] += 1
    assert all(n >= 10 for n in seen.values()), seen


def test_size_table_drives_the_layout(monkeypatch):
    """Changing a row of ``SIZES`` changes the scenes: the table is the one place the sizes live."""
    from m3l_core.data.synthetic import scene as scene_module

    tall = {**S.SIZES["table"], "height": (1.5, 1.5), "top": (0.1, 0.1)}
    monkeypatch.setitem(scene_module.SIZES, "table", tall)
    tables = [o for seed in range(5) for o in _objects(S.make_scene(np.random.default_rng(seed)), S.TABLE)]
    assert tables and all(hi[2] == pytest.approx(1.5) for _, hi in tables)
