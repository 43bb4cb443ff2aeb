"""Folder format, paper datasets, NYU converter and split tool."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import yaml

from m3l_core.data.folder import (
    ClassInfo,
    DatasetError,
    FolderDataset,
    load_classes,
    save_classes,
    write_sample,
    write_split,
)
from m3l_core.data.nyu import convert_nyu, load_mapping, main as nyu_main, read_indices
from m3l_core.data.paper import SUNRGBD_CLASSES, StanfordIndoor, SunRGBD
from m3l_core.data.splits import main as splits_main, make_split

REPO = Path(__file__).resolve().parents[1]
H, W = 12, 16


def _sample(seed: int = 0, h: int = H, w: int = W, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth_mm = rng.integers(300, 5000, (h, w)).astype(np.uint16)
    depth_mm[0, :3] = 0  # invalid
    label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
    label[-1, -2:] = 255
    return rgb, depth_mm, label


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A 3-sample dataset: a (png depth, labeled), b (npy depth, labeled), c (unlabeled)."""
    save_classes(tmp_path / "classes.yaml", ClassInfo(names=["floor", "wall", "table", "box"]))
    for i, name in enumerate("abc"):
        rgb, depth_mm, label = _sample(i)
        depth = depth_mm if name != "b" else depth_mm.astype(np.float32) / 1000.0
        write_sample(tmp_path, name, rgb=rgb, depth=depth, label=None if name == "c" else label)
    write_split(tmp_path, "train_labeled", ["a", "b"])
    (tmp_path / "splits" / "train_unlabeled.txt").write_text("# unlabeled frames\n\nc   # trailing comment\n")
    return tmp_path


# --- folder format ------------------------------------------------------------------------------


def test_folder_round_trip_png_and_npy_depth(root: Path) -> None:
    ds = FolderDataset(root, "train_labeled")
    assert len(ds) == 2 and ds.names == ["a", "b"] and ds.classes.names == ["floor", "wall", "table", "box"]
    for i in range(2):
        rgb, depth_mm, label = _sample(i)
        s = ds[i]
        assert s["name"] == "ab"[i]
        np.testing.assert_array_equal(s["rgb"], rgb)
        np.testing.assert_array_equal(s["label"], label)
        assert s["depth"].dtype == np.float32 and s["depth"].shape == (H, W)
        assert np.isnan(s["depth"][0, :3]).all() and np.isfinite(s["depth"][1:]).all()
        np.testing.assert_allclose(s["depth"][1:], depth_mm[1:] / 1000.0, rtol=1e-6)
    assert (root / "depth" / "a.png").exists() and (root / "depth" / "b.npy").exists()


def test_folder_depth_follows_the_one_invalid_depth_rule(root: Path) -> None:
    """65535 ("no return" of Kinect-style sensors) is invalid like 0, through preprocess.depth_to_metres."""
    from m3l_core.preprocess import depth_to_metres

    rgb, depth_mm, label = _sample(0)
    depth_mm[2, :4] = 65535
    write_sample(root, "a", rgb=rgb, depth=depth_mm, label=label)
    d = FolderDataset(root, "train_labeled")[0]["depth"]
    assert np.isnan(d[2, :4]).all() and np.isnan(d[0, :3]).all()
    np.testing.assert_array_equal(np.isnan(d), np.isnan(depth_to_metres(depth_mm)))
    zeroed = depth_mm.copy()
    zeroed[2, :4] = 0
    write_sample(root, "a", rgb=rgb, depth=zeroed, label=label)
    np.testing.assert_array_equal(FolderDataset(root, "train_labeled")[0]["depth"], d)


def test_folder_unlabeled_split_and_transform(root: Path) -> None:
    ds = FolderDataset(root, "train_unlabeled")
    assert ds.names == ["c"] and not ds.labeled
    s = ds[0]
    assert s["label"] is None and s["rgb"].shape == (H, W, 3)
    # An explicitly unlabeled view of a labeled split drops labels even though the files exist.
    assert FolderDataset(root, "train_labeled", labeled=False)[0]["label"] is None
    ds_t = FolderDataset(root, "train_labeled", transform=lambda s: s["name"].upper())
    assert [ds_t[i] for i in range(len(ds_t))] == ["A", "B"]
    with pytest.raises(IndexError):
        ds[1]


def test_write_sample_replaces_other_depth_format(root: Path) -> None:
    rgb, depth_mm, label = _sample(0)
    write_sample(root, "a", rgb=rgb, depth=depth_mm.astype(np.float32) / 1000, label=label)
    assert not (root / "depth" / "a.png").exists() and (root / "depth" / "a.npy").exists()
    with pytest.raises(ValueError, match="depth must be"):
        write_sample(root, "z", rgb=rgb, depth=depth_mm.astype(np.int32))


def _err(root: Path, split: str = "train_labeled", i: int = 0) -> str:
    with pytest.raises(DatasetError) as e:
        FolderDataset(root, split)[i]
    return str(e.value)


def test_missing_split_and_classes_files_are_named(root: Path) -> None:
    with pytest.raises(DatasetError, match=r"splits/val\.txt"):
        FolderDataset(root, "val")
    (root / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match=r"classes\.yaml"):
        FolderDataset(root, "train_labeled")


def test_split_file_duplicates_rejected(root: Path) -> None:
    (root / "splits" / "val.txt").write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match=r"val\.txt:3.*'a'.*line 1"):
        FolderDataset(root, "val")


def test_missing_and_corrupt_files_are_named(root: Path) -> None:
    (root / "rgb" / "a.png").unlink()
    assert "rgb/a.png" in _err(root) and "not found" in _err(root)
    (root / "rgb" / "a.png").write_bytes(b"not a png at all")
    msg = _err(root)
    assert "rgb/a.png" in msg and "corrupt" in msg
    (root / "depth" / "b.npy").write_bytes(b"garbage")
    assert "depth/b.npy" in _err(root, i=1)
    (root / "labels" / "b.png").unlink()
    (root / "depth" / "b.npy").unlink()
    assert "depth/b.png" in _err(root, i=1) and "depth/b.npy" in _err(root, i=1)


def test_missing_label_and_wrong_dtypes_are_named(root: Path) -> None:
    (root / "labels" / "a.png").unlink()
    assert "labels/a.png" in _err(root)
    rgb, depth_mm, label = _sample(0)
    cv2.imwrite(str(root / "labels" / "a.png"), label.astype(np.uint16))
    msg = _err(root)
    assert "labels/a.png" in msg and "8-bit" in msg
    cv2.imwrite(str(root / "labels" / "a.png"), label)
    cv2.imwrite(str(root / "depth" / "a.png"), (depth_mm // 20).astype(np.uint8))
    msg = _err(root)
    assert "depth/a.png" in msg and "16-bit" in msg
    write_sample(root, "a", rgb=rgb, depth=depth_mm, label=label)
    np.save(root / "depth" / "b.npy", depth_mm)  # uint16 in an .npy is not metres
    assert "depth/b.npy" in _err(root, i=1) and "float32" in _err(root, i=1)
    np.save(root / "depth" / "b.npy", depth_mm.astype(np.float32))
    cv2.imwrite(str(root / "depth" / "b.png"), depth_mm)
    assert "ambiguous" in _err(root, i=1)


def test_size_mismatch_names_all_files(root: Path) -> None:
    rgb, _, _ = _sample(0, h=H + 2)
    cv2.imwrite(str(root / "rgb" / "a.png"), rgb)
    msg = _err(root)
    for f in ("rgb/a.png", "depth/a.png", "labels/a.png"):
        assert f in msg, msg
    assert f"{W}x{H + 2}" in msg and f"{W}x{H}" in msg


def test_label_outside_classes_is_named(root: Path) -> None:
    _, _, label = _sample(0)
    label[3, 3] = 4  # 4 classes -> valid ids 0..3 and 255
    label[4, 4] = 254
    cv2.imwrite(str(root / "labels" / "a.png"), label)
    msg = _err(root)
    assert "labels/a.png" in msg and "[4, 254]" in msg


def test_classes_yaml_validation(tmp_path: Path) -> None:
    p = tmp_path / "classes.yaml"
    info = ClassInfo(names=["a", "b"], palette=[(1, 2, 3), (4, 5, 6)], ignore_index=255)
    save_classes(p, info)
    assert load_classes(p) == info
    # Palette is optional and defaults to distinct colours.
    p.write_text("names: [a, b, c]\n")
    got = load_classes(p)
    assert len(set(got.palette)) == 3 and got.ignore_index == 255
    cases = {
        "names: [a, b]\npalette: [[1, 2, 3]]\n": "palette",
        "names: [a]\npalette: [[1, 2, 300]]\n": "palette",
        "names: [a, b]\nignore_index: 1\n": "ignore_index",
        "names: [a]\nignore_index: 256\n": "ignore_index",
        "palette: [[1, 2, 3]]\n": "names",
        "names: [a, a]\n": "names",
        "names: [a]\ncolours: []\n": "colours",
        "names: [a\n": "YAML",
    }
    for text, field in cases.items():
        p.write_text(text)
        with pytest.raises(DatasetError) as e:
            load_classes(p)
        assert str(p) in str(e.value) and field in str(e.value), (text, str(e.value))


# --- paper datasets -----------------------------------------------------------------------------


def _write_rgb_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def test_stanford_colour_labels_and_invalid_depth(tmp_path: Path) -> None:
    labels = ["<UNK>_0_<UNK>_0_area_1"] + [f"wall_{i}_office_1_area_1" for i in range(1, 300)]
    labels[1] = "ceiling_1_office_1_area_1"
    labels[4] = "clutter_2_office_1_area_1"
    labels[5] = "unknownthing_1_office_1_area_1"
    labels[257] = "chair_3_office_1_area_1"  # colour (0, 1, 1): exercises the green byte
    (tmp_path / "semantic_labels.json").write_text(json.dumps(labels))
    rgb, _, _ = _sample(0, 2, 4)
    index = np.array([[0, 1, 4, 5], [257, 2, 855309, 299]])  # 855309 = (13, 13, 13), the no-label colour
    colour = np.stack([index >> 16, (index >> 8) & 255, index & 255], -1).astype(np.uint8)
    depth = np.array([[1024, 65535, 512, 0], [256, 1, 2048, 65534]], np.uint16)
    _write_rgb_png(tmp_path / "area_1/rgb/x_rgb.png", rgb)
    _write_rgb_png(tmp_path / "area_1/semantic/x_semantic.png", colour)
    (tmp_path / "area_1/depth").mkdir()
    cv2.imwrite(str(tmp_path / "area_1/depth/x_depth.png"), depth)
    split = tmp_path / "train.txt"
    split.write_text("area_1/rgb/x_rgb.png\tarea_1/depth/x_depth.png\tarea_1/semantic/x_semantic.png\n"
                     "\narea_1/rgb/x_rgb.png\tarea_1/depth/x_depth.png\n")
    ds = StanfordIndoor(tmp_path, split)
    assert len(ds) == 2 and ds.classes.num_classes == 13 and ds.names[0] == "area_1/rgb/x_rgb"
    s = ds[0]
    np.testing.assert_array_equal(s["rgb"], rgb)
    # ceiling=0, wall=2, clutter=12, chair=8; <UNK>, unknown names and out-of-list colours -> 255
    np.testing.assert_array_equal(s["label"], [[255, 0, 12, 255], [8, 2, 255, 2]])
    np.testing.assert_allclose(s["depth"][np.isfinite(s["depth"])], [2.0, 1.0, 0.5, 1 / 512, 4.0, 65534 / 512])
    assert np.isnan(s["depth"][0, 1]) and np.isnan(s["depth"][0, 3])
    assert ds[1]["label"] is None

    (tmp_path / "bad.txt").write_text("only_one_field.png\n")
    with pytest.raises(DatasetError, match=r"bad\.txt:1"):
        StanfordIndoor(tmp_path, tmp_path / "bad.txt")
    with pytest.raises(DatasetError, match=r"nowhere/semantic_labels\.json"):
        StanfordIndoor(tmp_path, split, semantic_labels=tmp_path / "nowhere/semantic_labels.json")


def _rotl3(mm: np.ndarray) -> np.ndarray:
    """How SUN RGB-D stores millimetres: rotated left by 3 bits in 16 bits."""
    mm = mm.astype(np.uint32)
    return (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16)


def test_sunrgbd_label_shift_and_depth_bit_rotation(tmp_path: Path) -> None:
    mm = np.array([[1234, 9000, 0], [500, 65535 >> 3, 8191]], np.uint16)
    rgb, _, _ = _sample(1, 2, 3)
    label = np.array([[0, 1, 37], [5, 0, 22]], np.uint8)
    _write_rgb_png(tmp_path / "image/a.png", rgb)
    (tmp_path / "depth").mkdir()
    (tmp_path / "label").mkdir()
    cv2.imwrite(str(tmp_path / "depth/a.png"), _rotl3(mm))
    cv2.imwrite(str(tmp_path / "label/a.png"), label)
    (tmp_path / "split.txt").write_text("image/a.png\tdepth/a.png\tlabel/a.png\n")
    ds = SunRGBD(tmp_path, tmp_path / "split.txt")
    assert ds.classes.names == list(SUNRGBD_CLASSES) and len(SUNRGBD_CLASSES) == 37
    s = ds[0]
    np.testing.assert_array_equal(s["label"], [[255, 0, 36], [4, 255, 21]])
    assert np.isnan(s["depth"][0, 2])
    np.testing.assert_allclose(s["depth"][0, :2], [1.234, 9.0], rtol=1e-6)
    np.testing.assert_allclose(s["depth"][1], [0.5, (65535 >> 3) / 1000, 8.191], rtol=1e-6)
    # Copies that already hold plain millimetres: bitshift off.
    cv2.imwrite(str(tmp_path / "depth/a.png"), mm)
    plain = SunRGBD(tmp_path, tmp_path / "split.txt", depth_bitshift=False)[0]["depth"]
    np.testing.assert_allclose(plain[0, :2], [1.234, 9.0], rtol=1e-6)
    label[0, 0] = 38
    cv2.imwrite(str(tmp_path / "label/a.png"), label)
    with pytest.raises(DatasetError, match=r"label/a\.png.*\[38\]"):
        ds[0]


# --- NYU converter ------------------------------------------------------------------------------

RAW_NAMES = ["wall", "floor", "Chair", "table", "cup"]


def _fake_nyu_mat(path: Path, n: int = 4, h: int = 6, w: int = 8):
    """Same layout as nyu_depth_v2_labeled.mat (MATLAB v7.3 stores arrays transposed)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, (n, h, w)).astype(np.float32)
    labels = rng.integers(0, len(RAW_NAMES) + 1, (n, h, w)).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1))
        f.create_dataset("depths", data=depths.transpose(0, 2, 1))
        f.create_dataset("labels", data=labels.transpose(0, 2, 1))
        refs = f.create_group("#refs#")
        r = [refs.create_dataset(f"n{k}", data=np.array([[ord(c)] for c in s], np.uint16)).ref
             for k, s in enumerate(RAW_NAMES)]
        names = f.create_dataset("names", (1, len(r)), dtype=h5py.ref_dtype)
        names[0, :] = r
    return images, depths, labels


def test_nyu_converter_with_shipped_name_mapping(tmp_path: Path) -> None:
    images, depths, labels = _fake_nyu_mat(tmp_path / "nyu.mat")
    (tmp_path / "train.txt").write_text("1\n3\n")
    (tmp_path / "test.yaml").write_text("testNdxs: [2, 4]\n")
    s = convert_nyu(tmp_path / "nyu.mat", tmp_path / "out", REPO / "config/nyu_names_to_13.yaml",
                    train_indices=tmp_path / "train.txt", test_indices=tmp_path / "test.yaml")
    assert s["frames"] == 4 and s["splits"] == {"train": 2, "test": 2}
    out = tmp_path / "out"
    assert (out / "splits/train.txt").read_text().split() == ["nyu_0001", "nyu_0003"]
    ds = FolderDataset(out, "test")
    names13 = ds.classes.names
    assert len(names13) == 13
    # raw: 0 unlabeled, 1 wall, 2 floor, 3 Chair (case-insensitive), 4 table, 5 cup (unlisted -> default objects)
    expect = np.array([255] + [names13.index(c) for c in ("wall", "floor", "chair", "table", "objects")])
    smp = ds[1]  # nyu_0004
    assert smp["name"] == "nyu_0004"
    np.testing.assert_array_equal(smp["rgb"], images[3])
    np.testing.assert_array_equal(smp["label"], expect[labels[3]])
    np.testing.assert_allclose(smp["depth"], np.round(depths[3] * 1000) / 1000, atol=1e-6)
    assert s["default_pixels"] == int((labels == 5).sum())
    assert s["ignored_pixels"] == int((labels == 0).sum())


def test_nyu_cli_flat_mapping_npy_depth_and_no_test_split(tmp_path: Path, capsys) -> None:
    _, depths, labels = _fake_nyu_mat(tmp_path / "nyu.mat")
    (tmp_path / "map.yaml").write_text("1: 0\n2: 1\n4: 1\n")
    save_classes(tmp_path / "classes.yaml", ClassInfo(names=["wall", "flat"]))
    argv = ["--mat", str(tmp_path / "nyu.mat"), "--out", str(tmp_path / "out"), "--mapping", str(tmp_path / "map.yaml"),
            "--classes", str(tmp_path / "classes.yaml"), "--depth-format", "npy"]
    assert nyu_main(argv) == 0
    printed = capsys.readouterr().out
    assert "no test split" in printed and "wrote 4 frames" in printed
    ds = FolderDataset(tmp_path / "out", "train")
    assert len(ds) == 4 and ds.classes.names == ["wall", "flat"]
    np.testing.assert_array_equal(ds[0]["label"], np.array([255, 0, 1, 255, 1, 255])[labels[0]])
    np.testing.assert_array_equal(ds[0]["depth"], depths[0])  # npy is lossless
    assert nyu_main(argv) == 1  # refuses to overwrite without --force
    assert nyu_main(argv + ["--force"]) == 0


def test_nyu_mapping_and_input_errors(tmp_path: Path) -> None:
    (tmp_path / "flat.yaml").write_text("1: 0\n")
    with pytest.raises(DatasetError, match=r"flat\.yaml.*--classes"):
        load_mapping(tmp_path / "flat.yaml", RAW_NAMES)
    (tmp_path / "bad.yaml").write_text("names: [a, b]\nmap: {wall: c}\n")
    with pytest.raises(DatasetError, match=r"bad\.yaml.*'c'"):
        load_mapping(tmp_path / "bad.yaml", RAW_NAMES)
    (tmp_path / "ids.yaml").write_text("names: [a, b]\nkey: id\ndefault: ignore\nmap: {1: a, 9: b}\n")
    with pytest.raises(DatasetError, match=r"ids\.yaml.*raw id 9"):
        load_mapping(tmp_path / "ids.yaml", RAW_NAMES)
    (tmp_path / "ids.yaml").write_text("names: [a, b]\nkey: id\nmap: {1: a, 5: 1}\n")
    lut, info, defaulted = load_mapping(tmp_path / "ids.yaml", RAW_NAMES)
    assert lut.tolist() == [255, 0, 255, 255, 255, 1] and info.names == ["a", "b"]
    assert defaulted.tolist() == [False, False, True, True, True, False]
    (tmp_path / "not.mat").write_bytes(b"plain bytes")
    with pytest.raises(DatasetError, match=r"not\.mat"):
        convert_nyu(tmp_path / "not.mat", tmp_path / "o", REPO / "config/nyu_names_to_13.yaml")
    (tmp_path / "idx.txt").write_text("# official\n[1, 2,\n 3]\n")
    assert read_indices(tmp_path / "idx.txt") == [0, 1, 2]
    _fake_nyu_mat(tmp_path / "nyu.mat")
    (tmp_path / "tr.txt").write_text("1 2 3\n")
    (tmp_path / "te.txt").write_text("3 4\n")
    with pytest.raises(DatasetError, match="in both"):
        convert_nyu(tmp_path / "nyu.mat", tmp_path / "o", REPO / "config/nyu_names_to_13.yaml",
                    train_indices=tmp_path / "tr.txt", test_indices=tmp_path / "te.txt")
    (tmp_path / "te.txt").write_text("4 5\n")
    with pytest.raises(DatasetError, match=r"te\.txt.*\[5\]"):
        convert_nyu(tmp_path / "nyu.mat", tmp_path / "o", REPO / "config/nyu_names_to_13.yaml",
                    train_indices=tmp_path / "tr.txt", test_indices=tmp_path / "te.txt")


def test_shipped_mapping_targets_are_valid() -> None:
    spec = yaml.safe_load((REPO / "config/nyu_names_to_13.yaml").read_text())
    assert len(spec["names"]) == 13 and len(spec["palette"]) == 13
    assert spec["default"] in spec["names"] and set(spec["map"].values()) <= set(spec["names"])


# --- splits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,fraction,count", [
    (49199, 0.001, 49), (49199, 0.002, 98), (49199, 0.01, 491),  # the paper's Stanford counts
    (4757, 0.0625, 297), (4757, 0.125, 594), (4757, 0.25, 1189),  # and SUN RGB-D
    (10, 0.001, 1),  # min_labeled
])
def test_make_split_counts(n: int, fraction: float, count: int) -> None:
    names = [f"f{i:05d}" for i in range(n)]
    labeled, unlabeled = make_split(names, fraction, seed=0)
    assert len(labeled) == count and len(unlabeled) == n - count
    assert not set(labeled) & set(unlabeled) and set(labeled) | set(unlabeled) == set(names)


def test_make_split_deterministic_and_order_independent() -> None:
    names = [f"f{i:04d}" for i in range(1000)]
    a = make_split(names, 0.05, seed=3)
    assert a == make_split(list(reversed(names)), 0.05, seed=3)
    assert a[0] != make_split(names, 0.05, seed=4)[0]
    assert make_split(names, 0.001, seed=0, min_labeled=5)[0].__len__() == 5
    with pytest.raises(ValueError):
        make_split(names, 0.0, seed=0)
    with pytest.raises(ValueError):
        make_split(["a", "a"], 0.5, seed=0)


def test_splits_cli(tmp_path: Path, capsys) -> None:
    write_split(tmp_path, "train", [f"s{i}" for i in range(200)])
    argv = ["--data", str(tmp_path), "--fraction", "0.05", "--seed", "7"]
    assert splits_main(argv) == 0
    assert "10 labeled" in capsys.readouterr().out
    lab = (tmp_path / "splits/train_labeled.txt").read_text().split()
    unl = (tmp_path / "splits/train_unlabeled.txt").read_text().split()
    assert (lab, unl) == make_split([f"s{i}" for i in range(200)], 0.05, 7)
    assert splits_main(argv) == 1 and "--force" in capsys.readouterr().err
    assert splits_main(argv[:-1] + ["8", "--force"]) == 0
    assert (tmp_path / "splits/train_labeled.txt").read_text().split() != lab
    assert splits_main(["--data", str(tmp_path), "--fraction", "0.1", "--source", "nope", "--force"]) == 1


def test_splits_module_entry_point(tmp_path: Path) -> None:
    write_split(tmp_path, "train", [f"s{i}" for i in range(1000)])
    r = subprocess.run([sys.executable, "-m", "m3l_core.data.splits", "--data", str(tmp_path), "--fraction", "0.002"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 labeled" in r.stdout and "998 unlabeled" in r.stdout
