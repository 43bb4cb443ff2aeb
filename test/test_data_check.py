"""The up-front dataset check: header reads, one-line errors naming the file, the CLI, the trainer's use."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from m3l_core.data.check import check_dataset, main as check_main, read_header
from m3l_core.data.datasets import DatasetSpec, open_dataset
from m3l_core.data.folder import ClassInfo, DatasetError, FolderDataset, save_classes, write_sample, write_split
from train_fixtures import CONFIGS, TINY, m3l_logs_propagate, write_paper_dataset  # noqa: F401 (fixture)

H, W = 12, 16


def _frame(seed: int, h: int = H, w: int = W):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(300, 5000, (h, w)).astype(np.uint16),
            rng.integers(0, 4, (h, w)).astype(np.uint8))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Four good labeled frames a..d (d with float .npy depth) in splits/train_labeled.txt."""
    save_classes(tmp_path / "classes.yaml", ClassInfo(names=["floor", "wall", "table", "box"]))
    for i, name in enumerate("abcd"):
        rgb, mm, label = _frame(i)
        write_sample(tmp_path, name, rgb=rgb, depth=mm if name != "d" else mm / np.float32(1000), label=label)
    write_split(tmp_path, "train_labeled", list("abcd"))
    return tmp_path


def _problem(root: Path, level: str = "full") -> str:
    with pytest.raises(DatasetError) as e:
        check_dataset(FolderDataset(root, "train_labeled"), level)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("kind", ["png8", "png16", "rgba", "jpg", "npy2", "npy3", "gray"])
def test_headers_match_what_opencv_and_numpy_decode(kind, tmp_path):
    rng = np.random.default_rng(0)
    arr = {"png8": rng.integers(0, 255, (7, 9), dtype=np.uint8),
           "png16": rng.integers(0, 65535, (7, 9), dtype=np.uint16),
           "rgba": rng.integers(0, 255, (7, 9, 4), dtype=np.uint8),
           "jpg": rng.integers(0, 255, (7, 9, 3), dtype=np.uint8),
           "gray": rng.integers(0, 255, (7, 9), dtype=np.uint8),
           "npy2": rng.random((7, 9), dtype=np.float32), "npy3": rng.random((7, 9, 1))}[kind]
    path = tmp_path / f"x.{'jpg' if kind in ('jpg', 'gray') else 'npy' if kind.startswith('npy') else 'png'}"
    if path.suffix == ".npy":
        np.save(path, arr)
        ref = np.load(path)
    else:
        assert cv2.imwrite(str(path), arr)
        ref = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    h = read_header(path)
    assert (h.height, h.width, h.channels, h.dtype) == (ref.shape[0], ref.shape[1],
                                                       ref.shape[2] if ref.ndim == 3 else 1, str(ref.dtype))


def test_a_good_dataset_passes_at_both_levels(root):
    ds = FolderDataset(root, "train_labeled")
    assert check_dataset(ds, "full") == check_dataset(ds, "headers") == 4
    assert check_dataset(ds, "off") == 0


def test_each_problem_is_one_line_naming_the_file(root):
    rgb, mm, label = _frame(9)
    (root / "rgb" / "a.png").unlink()
    assert str(root / "rgb" / "a") in _problem(root) and "not found" in _problem(root)
    write_sample(root, "a", rgb=rgb, depth=mm, label=label)

    cv2.imwrite(str(root / "depth" / "b.png"), (mm // 20).astype(np.uint8))  # 8-bit depth
    assert _problem(root, "headers").startswith(f"{root / 'depth' / 'b.png'}: depth must be a single-channel 16-bit")
    write_sample(root, "b", rgb=rgb, depth=mm, label=label)

    cv2.imwrite(str(root / "labels" / "c.png"), label[:, :-2])  # label narrower than the frame
    msg = _problem(root, "headers")
    assert "size mismatch" in msg and f"{root / 'labels' / 'c.png'} is {W - 2}x{H}" in msg
    cv2.imwrite(str(root / "labels" / "c.png"), np.full_like(label, 7))  # class 7 of 4: only "full" decodes
    assert check_dataset(FolderDataset(root, "train_labeled"), "headers") == 4
    assert _problem(root).startswith(f"{root / 'labels' / 'c.png'}: label values [7] are outside the 4 classes")
    write_sample(root, "c", rgb=rgb, depth=mm, label=label)

    np.save(root / "depth" / "d.npy", mm)  # uint16 in a .npy
    assert _problem(root).startswith(f"{root / 'depth' / 'd.npy'}: depth .npy must be HxW float32 metres")
    (root / "depth" / "d.npy").write_bytes(b"\x93NUMPY garbage")
    assert "header is unreadable or corrupt" in _problem(root)
    (root / "depth" / "d.npy").unlink()
    write_sample(root, "d", rgb=rgb, depth=mm, label=label)

    (root / "rgb" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # torn right after the signature
    assert _problem(root) == f"{root / 'rgb' / 'a.png'}: rgb PNG is truncated or corrupt (no IHDR header)"
    (root / "rgb" / "a.png").write_text("not an image")
    assert "not a PNG or JPEG" in _problem(root)


def test_cli_lists_every_problem_and_uses_exit_codes(root, capsys):
    assert check_main([str(root)]) == 0
    assert "ok: 4 frame(s) in 1 split(s)" in capsys.readouterr().out
    cv2.imwrite(str(root / "labels" / "a.png"), np.full((H, W), 9, np.uint8))
    cv2.imwrite(str(root / "labels" / "b.png"), np.full((H, W), 9, np.uint8))
    assert check_main([str(root), "--split", "train_labeled"]) == 1
    out = capsys.readouterr()
    assert str(root / "labels" / "a.png") in out.out and str(root / "labels" / "b.png") in out.out
    assert "2 problem(s) in 4 frame(s)" in out.err
    assert check_main([str(root), "--level", "headers"]) == 0
    assert check_main([str(root / "nowhere")]) == 1
    assert check_main([str(root), "--split", "holdout"]) == 1
    assert str(root / "splits" / "holdout.txt") in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        check_main([str(root), "--format", "kinect"])
    assert e.value.code == 2


@pytest.mark.parametrize("kind", ["stanford", "sun"])
def test_paper_formats_are_checked_through_their_split_files(kind, tmp_path, capsys):
    data = tmp_path / kind
    write_paper_dataset(data, kind)
    assert check_main([str(data), "--format", kind]) == 0  # every split file under splits/
    assert "ok: 6 frame(s) in 3 split(s)" in capsys.readouterr().out
    ds = open_dataset(DatasetSpec(root=str(data), format=kind), "splits/val.txt")
    label = data / "label" / "3.png"
    if kind == "sun":
        cv2.imwrite(str(label), np.full((36, 48), 40, np.uint8))  # ids stop at 37
        assert check_dataset(ds, "headers") == 2
        with pytest.raises(DatasetError, match=f"{label}: label values \\[40\\] are outside 0..37"):
            check_dataset(ds, "full")
    else:
        cv2.imwrite(str(label), np.zeros((36, 48), np.uint8))  # grey, not a 24-bit colour index
        with pytest.raises(DatasetError, match=f"{label}: Stanford label must be a 24-bit colour PNG"):
            check_dataset(ds, "headers")


def test_training_stops_before_step_1_naming_a_bad_validation_frame(tmp_path, capsys):
    from m3l_core.cli.train import main as train_main
    from m3l_core.data.synthetic import write_folder_dataset

    data = tmp_path / "data"
    write_folder_dataset(data, counts={"train_labeled": 2, "val": 3}, height=36, width=48, seed=0, progress=False)
    bad = data / "labels" / f"{(data / 'splits' / 'val.txt').read_text().split()[2]}.png"
    cv2.imwrite(str(bad), np.full((36, 48), 77, np.uint8))
    out = tmp_path / "run"
    args = ["--config", str(CONFIGS / "synthetic_sup.yaml"), "--data", str(data), "--out", str(out), "--device", "cpu"]
    for s in [*TINY, "max_iters=6", "eval_every=6"]:
        args += ["--set", s]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: label values [77] are outside the 9 classes" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "state").exists()  # not one step ran


def test_depth_in_the_wrong_units_is_reported_naming_the_file(root, caplog, m3l_logs_propagate):
    rgb, mm, label = _frame(0)
    write_sample(root, "a", rgb=rgb, depth=(mm * 10).astype(np.uint16), label=label)  # 0.1 mm steps
    with caplog.at_level("WARNING"):
        check_dataset(FolderDataset(root, "train_labeled"))
    (msg,) = [r.getMessage() for r in caplog.records if "median valid depth" in r.getMessage()]
    assert msg.startswith(f"{root / 'depth' / 'a.png'}: median valid depth is")
    caplog.clear()
    write_sample(root, "a", rgb=rgb, depth=mm, label=label)
    with caplog.at_level("WARNING"):
        check_dataset(FolderDataset(root, "train_labeled"))
    assert not [r for r in caplog.records if "median valid depth" in r.getMessage()]
