"""The evaluation loop, the report files and the evaluator command (also under torchrun)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3l_core.checkpoint import save_checkpoint
from m3l_core.evaluation import (
    CONDITIONS,
    collate_eval,
    conditions_for,
    evaluate,
    mm_robust,
    present_mask,
    summarize_results,
)
from m3l_core.metrics import confusion_matrix
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing
from m3l_core.cli import evaluate as evaluate_cli
from m3l_core.report import compare_runs
from train_fixtures import REPO, write_paper_dataset


def load_metrics(path: Path) -> dict:
    return json.loads(Path(path).read_text())

NUM_CLASSES = 4
CLASS_NAMES = ["floor", "wall", "table", "chair"]


# ------------------------------------------------------------------ helpers

class FixedLogits(torch.nn.Module):
    """Ensemble logits = one-hot of a fixed low-res map per condition; records the masks it gets."""

    def __init__(self, maps: dict[tuple[bool, bool], torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps  # present row -> (h, w) class map
        self.seen: list[torch.Tensor] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, rgb, depth, present=None):
        self.seen.append(present.clone())
        assert not self.training
        key = tuple(bool(v) for v in present[0])
        m = self.maps[key].to(rgb.device)
        logits = F.one_hot(m, NUM_CLASSES).permute(2, 0, 1).float()[None].expand(rgb.shape[0], -1, -1, -1)
        return {"ensemble": logits * 10.0}


def _batch(b: int, label_hw=(8, 10), in_hw=(4, 5), seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, NUM_CLASSES, (b, *label_hw), generator=g)
    label[:, 0, :3] = 255
    return {"rgb": torch.randn(b, 3, *in_hw, generator=g), "depth": torch.rand(b, 1, *in_hw, generator=g),
            "label": label, "name": [f"s{i}" for i in range(b)]}


def _tiny_model(*, missing_token=True, modalities=("rgb", "depth"), seed=0) -> LinearFusionSegFormer:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="tiny", num_classes=NUM_CLASSES, modalities=modalities, missing_token=missing_token,
                      decoder_dim=16)
    model = LinearFusionSegFormer(cfg).eval()
    with torch.no_grad():  # make the untrained head non-trivial so predictions vary
        model.decoder.classifier.weight.mul_(20.0)
        if model.missing_token is not None:
            model.missing_token.normal_(0.0, 1.0)
    return model


# ------------------------------------------------------------------ small units

def test_present_mask_and_conditions():
    assert present_mask("rgbd", 2, "cpu").tolist() == [[True, True]] * 2
    assert present_mask("rgb", 1, "cpu").tolist() == [[True, False]]
    assert present_mask("depth", 3, "cpu").tolist() == [[False, True]] * 3
    assert present_mask("rgb", 2, "cpu").dtype == torch.bool
    with pytest.raises(ValueError, match="condition"):
        present_mask("thermal", 1, "cpu")
    assert conditions_for(ModelConfig(backbone="tiny")) == CONDITIONS
    assert conditions_for(ModelConfig(backbone="tiny", modalities=("rgb",))) == ("rgb",)
    assert conditions_for(ModelConfig(backbone="tiny", modalities=("depth",))) == ("depth",)


def test_distributed_helpers_work_uninitialised_and_shards_are_disjoint():
    from m3l_core import distributed as du

    assert (du.get_rank(), du.get_world_size(), du.is_main(), du.is_initialized()) == (0, 1, True, False)
    t = torch.tensor([1, 2, 3])
    assert du.all_reduce_sum(t) is t and t.tolist() == [1, 2, 3]
    du.barrier()
    du.cleanup()
    info = du.init_from_env("cpu") if not du.launched_by_torchrun() else None
    assert info is not None and info.world_size == 1 and info.is_main and not du.is_initialized()
    shards = [list(du.ShardSampler(7, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]] and [len(du.ShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 2, 2]
    assert list(du.ShardSampler(5)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank"):
        du.ShardSampler(5, rank=2, world_size=2)


def test_collate_eval_stacks_equal_and_lists_unequal_labels():
    a = {"rgb": torch.zeros(3, 4, 5), "depth": torch.zeros(1, 4, 5), "label": torch.zeros(6, 7, dtype=torch.long),
         "name": "a", "index": 0}
    b = {**a, "label": torch.zeros(8, 9, dtype=torch.long), "name": "b", "index": 1}
    same = collate_eval([a, {**a, "name": "c", "index": 2}])
    assert same["rgb"].shape == (2, 3, 4, 5) and same["label"].shape == (2, 6, 7)
    assert same["name"] == ["a", "c"] and same["index"].tolist() == [0, 2]
    mixed = collate_eval([a, b])
    assert isinstance(mixed["label"], list) and [t.shape for t in mixed["label"]] == [(6, 7), (8, 9)]
    with pytest.raises(ValueError, match="rgb"):
        collate_eval([a, {**a, "rgb": torch.zeros(3, 2, 2)}])


def test_evaluate_upsamples_bilinear_to_label_size_and_sets_masks():
    g = torch.Generator().manual_seed(1)
    maps = {k: torch.randint(0, NUM_CLASSES, (4, 5), generator=g) for k in [(True, True), (True, False), (False, True)]}
    model = FixedLogits(maps).train()
    batches = [_batch(2, seed=0), _batch(3, seed=1)]
    cms = evaluate(model, batches, num_classes=NUM_CLASSES)
    assert set(cms) == set(CONDITIONS)
    assert model.training, "evaluate must restore train mode"
    # 3 conditions x 2 batches, each with the condition's mask for the whole batch.
    assert [m[0].tolist() for m in model.seen] == [[True, True], [True, False], [False, True]] * 2
    for cond, key in zip(CONDITIONS, [(True, True), (True, False), (False, True)]):
        logits = F.one_hot(maps[key], NUM_CLASSES).permute(2, 0, 1).float()[None] * 10.0
        pred = F.interpolate(logits, size=(8, 10), mode="bilinear", align_corners=False).argmax(1)[0]
        expected = sum(confusion_matrix(pred.expand_as(b["label"]), b["label"], NUM_CLASSES) for b in batches)
        assert torch.equal(cms[cond], expected), cond
        assert int(cms[cond].sum()) == 5 * (80 - 3)  # ignore pixels skipped


def test_evaluate_handles_batches_with_different_label_sizes():
    g = torch.Generator().manual_seed(2)
    maps = {k: torch.randint(0, NUM_CLASSES, (4, 5), generator=g) for k in [(True, True), (True, False), (False, True)]}
    b1, b2 = _batch(1, label_hw=(8, 10), seed=3), _batch(1, label_hw=(12, 7), seed=4)
    mixed = collate_eval([{k: (v[0] if k != "name" else v[0]) for k, v in b.items()} for b in (b1, b2)])
    assert isinstance(mixed["label"], list)
    seen_shapes = []
    cms_mixed = evaluate(FixedLogits(maps), [mixed], num_classes=NUM_CLASSES, conditions=("rgb",),
                         on_batch=lambda batch, preds: seen_shapes.extend(p.shape for p in preds["rgb"]))
    cms_single = evaluate(FixedLogits(maps), [b1, b2], num_classes=NUM_CLASSES, conditions=("rgb",))
    assert list(cms_mixed) == ["rgb"]
    assert torch.equal(cms_mixed["rgb"], cms_single["rgb"])
    assert seen_shapes == [(8, 10), (12, 7)]


@pytest.mark.parametrize("missing_token", [True, False])
def test_missing_modality_values_do_not_change_the_result(missing_token):
    model = _tiny_model(missing_token=missing_token)
    base = [_batch(2, label_hw=(20, 24), in_hw=(32, 32), seed=s) for s in range(2)]
    g = torch.Generator().manual_seed(9)
    depth_noise = [{**b, "depth": torch.rand(b["depth"].shape, generator=g) * 5} for b in base]
    depth_zero = [{**b, "depth": torch.zeros_like(b["depth"])} for b in base]
    rgb_noise = [{**b, "rgb": torch.randn(b["rgb"].shape, generator=g) * 3} for b in base]
    rgb_zero = [{**b, "rgb": torch.zeros_like(b["rgb"])} for b in base]
    kw = dict(num_classes=NUM_CLASSES)
    a = evaluate(model, depth_noise, conditions=("rgb", "rgbd"), **kw)
    b = evaluate(model, depth_zero, conditions=("rgb", "rgbd"), **kw)
    assert torch.equal(a["rgb"], b["rgb"])  # depth missing: its values never matter
    assert not torch.equal(a["rgbd"], b["rgbd"])  # ...but they do when depth is present
    c = evaluate(model, rgb_noise, conditions=("depth",), **kw)
    d = evaluate(model, rgb_zero, conditions=("depth",), **kw)
    assert torch.equal(c["depth"], d["depth"])
    assert int(a["rgb"].sum()) > 0


def test_mm_robust_and_summaries():
    cm_perfect = torch.diag(torch.tensor([5, 5, 5, 5]))
    cm_half = torch.tensor([[5, 5, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0], [0, 0, 0, 0]])
    res = summarize_results({"rgbd": cm_perfect, "rgb": cm_half, "depth": cm_perfect}, CLASS_NAMES)
    # cm_half IoUs: 5/10, 10/15, 10/10, class 3 absent -> mean of three
    half_miou = 100 * (0.5 + 2 / 3 + 1.0) / 3
    assert res["rgb"]["miou"] == pytest.approx(half_miou)
    assert res["mm_robust"]["miou"] == pytest.approx((100 + half_miou + 100) / 3)
    assert res["mm_robust"]["pixel_acc"] == pytest.approx((100 + 100 * 25 / 30 + 100) / 3)
    assert res["mm_robust"]["per_class_iou"]["chair"] == pytest.approx(100.0)  # absent in rgb: mean of the others
    uni = summarize_results({"rgb": cm_half}, CLASS_NAMES)
    assert uni["rgbd"] is None and uni["depth"] is None and uni["mm_robust"] is None
    assert mm_robust({"rgbd": None, "rgb": res["rgb"], "depth": res["depth"]}) is None


# ------------------------------------------------------------------ the evaluator command

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from m3l_core.data.synthetic import write_folder_dataset

    root = tmp_path_factory.mktemp("evaldata")
    data = root / "data"
    write_folder_dataset(data, counts={"test": 5}, height=32, width=40, seed=3, progress=False)
    from m3l_core.data.folder import load_classes

    classes = load_classes(data / "classes.yaml")
    pre = Preprocessing(input_size=(32, 32))
    ckpts = {}
    for name, kw in {"lf": {}, "rgb_only": {"modalities": ("rgb",), "missing_token": False}}.items():
        torch.manual_seed(0)
        cfg = ModelConfig(backbone="tiny", num_classes=classes.num_classes, decoder_dim=16, **kw)
        model = LinearFusionSegFormer(cfg)
        ckpts[name] = root / f"{name}.safetensors"
        save_checkpoint(ckpts[name], model, class_names=classes.names, palette=classes.palette, preprocessing=pre)
    return {"data": data, "ckpts": ckpts, "classes": classes, "root": root}


def _run_cli(ckpt, data, out, *extra):
    return evaluate_cli.main(["--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                              "--workers", "0", "--batch-size", "2", *extra])


def test_cli_writes_three_conditions_mm_robust_and_files(tiny_setup, capsys):
    out = tiny_setup["root"] / "out_lf"
    assert _run_cli(tiny_setup["ckpts"]["lf"], tiny_setup["data"], out, "--num-examples", "3") == 0
    printed = capsys.readouterr().out
    assert "MM-Robust" in printed and "Depth only" in printed
    assert "model input size: 32x32" in printed  # from the checkpoint, not the 32x40 frames
    for name in ("metrics.json", "metrics.md", "metrics.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    m = load_metrics(out / "metrics.json")
    for cond in CONDITIONS:
        assert 0.0 <= m[cond]["miou"] <= 100.0
        assert set(m[cond]) >= {"miou", "macc", "pixel_acc", "per_class_iou"}
        assert list(m[cond]["per_class_iou"]) == tiny_setup["classes"].names
    assert m["mm_robust"]["miou"] == pytest.approx(sum(m[c]["miou"] for c in CONDITIONS) / 3)
    assert m["split"] == "test" and m["num_samples"] == 5 and m["input_size"] == [32, 32]
    # Every labeled pixel of the split is counted once per condition.
    labels = [np.asarray(__import__("cv2").imread(str(p), -1)) for p in sorted((tiny_setup["data"] / "labels").rglob("*.png"))]
    n_valid = sum(int((lab < tiny_setup["classes"].num_classes).sum()) for lab in labels)
    for cond in CONDITIONS:
        assert int(np.asarray(m["confusion_matrices"][cond]).sum()) == n_valid
    md = (out / "metrics.md").read_text()
    assert "| MM-Robust |" in md and "| RGB only |" in md
    import matplotlib.image

    grid = matplotlib.image.imread(out / "examples.png")
    assert grid.shape[0] > 200 and grid.shape[1] > 600  # 3 rows x 6 columns


def test_cli_unimodal_reports_only_its_condition(tiny_setup):
    out = tiny_setup["root"] / "out_rgb"
    assert _run_cli(tiny_setup["ckpts"]["rgb_only"], tiny_setup["data"], out, "--num-examples", "1") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["rgb"]["miou"] is not None
    assert m["rgbd"] is None and m["depth"] is None and m["mm_robust"] is None
    assert (out / "examples.png").is_file()


def test_cli_rejects_class_count_mismatch(tiny_setup, tmp_path, capsys):
    torch.manual_seed(0)
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=2, decoder_dim=16))
    ckpt = tmp_path / "two.safetensors"
    save_checkpoint(ckpt, model, class_names=["a", "b"], preprocessing=Preprocessing(input_size=(32, 32)))
    assert _run_cli(ckpt, tiny_setup["data"], tmp_path / "out") == 1
    msg = capsys.readouterr().err
    assert "classes.yaml" in msg and "two.safetensors" in msg and "2 classes" in msg


def test_cli_usage_errors_exit_2(tiny_setup, capsys):
    ckpt = str(tiny_setup["ckpts"]["lf"])
    for bad in (["--format", "stanford"], ["--batch-size", "0"], ["--threads", "-1"], ["--precision", "fp64"]):
        with pytest.raises(SystemExit) as e:
            evaluate_cli.main(["--checkpoint", ckpt, "--data", str(tiny_setup["data"]), *bad])
        assert e.value.code == 2, bad


def test_compare_runs_table_and_chart(tiny_setup, tmp_path):
    runs = {"LF + M3L": load_metrics(tiny_setup["root"] / "out_lf" / "metrics.json"),
            "Uni-modal RGB": load_metrics(tiny_setup["root"] / "out_rgb" / "metrics.json")}
    md = compare_runs(runs, tmp_path / "cmp.md", tmp_path / "cmp.png")
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    assert lines[0].startswith("| Method | RGB mIoU | Depth mIoU | RGBD mIoU | MM-Robust mIoU")
    lf = lines[1].split("|")
    assert lf[1].strip() == "LF + M3L" and float(lf[5]) == pytest.approx(runs["LF + M3L"]["mm_robust"]["miou"], abs=0.01)
    uni = [c.strip() for c in lines[2].split("|")]
    assert uni[3] == "-" and uni[4] == "-" and uni[5] == "-" and uni[2] != "-"
    assert (tmp_path / "cmp.png").stat().st_size > 0 and (tmp_path / "cmp.md").read_text() == md


def test_torchrun_two_processes_equal_single_process(tiny_setup):
    """2 gloo ranks on 5 samples (uneven shards) give exactly the single-process confusion matrices."""
    data, ckpt = tiny_setup["data"], tiny_setup["ckpts"]["lf"]
    single = tiny_setup["root"] / "single"
    _run_cli(ckpt, data, single, "--num-examples", "0")
    ddp = tiny_setup["root"] / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "training" / "evaluate.py"), "--checkpoint", str(ckpt), "--data", str(data),
           "--out", str(ddp), "--workers", "0", "--batch-size", "2", "--device", "cpu", "--num-examples", "1"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert a["confusion_matrices"] == b["confusion_matrices"]
    for cond in CONDITIONS + ("mm_robust",):
        assert a[cond]["miou"] == b[cond]["miou"]
    assert not math.isnan(b["mm_robust"]["miou"])


# ------------------------------------------------------------------ the paper's formats, bad frames


@pytest.mark.parametrize("kind,num_classes", [("stanford", 13), ("sun", 37)])
def test_cli_evaluates_stanford_and_sun_split_files(kind, num_classes, tmp_path, capsys):
    from m3l_core.data.datasets import DatasetSpec, open_dataset

    data = tmp_path / kind
    write_paper_dataset(data, kind)  # 4 frames of 36x48; splits/val.txt lists the last 2
    ds = open_dataset(DatasetSpec(root=str(data), format=kind), "splits/val.txt")
    torch.manual_seed(0)
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=num_classes, decoder_dim=16))
    ckpt = tmp_path / f"{kind}.safetensors"
    save_checkpoint(ckpt, model, class_names=ds.classes.names, preprocessing=Preprocessing(input_size=(32, 64)))
    out = tmp_path / "out"
    assert evaluate_cli.main(["--checkpoint", str(ckpt), "--data", str(data), "--format", kind, "--split",
                              "splits/val.txt", "--out", str(out), "--workers", "0", "--num-examples", "1"]) == 0
    assert "model input size: 32x64" in capsys.readouterr().out
    m = load_metrics(out / "metrics.json")
    assert (m["format"], m["num_samples"]) == (kind, 2)
    # Every valid decoded label pixel counted once per condition: Stanford's <UNK> index is ignored,
    # SUN's ids 1..3 become classes 0..2.
    n_valid = sum(int((ds.load(i)["label"] < num_classes).sum()) for i in range(len(ds)))
    assert n_valid == 2 * 36 * 48 if kind == "sun" else 0 < n_valid < 2 * 36 * 48
    for cond in CONDITIONS:
        assert int(np.asarray(m["confusion_matrices"][cond]).sum()) == n_valid
        assert 0.0 <= m[cond]["miou"] <= 100.0


def test_a_frame_that_fails_in_a_worker_is_one_line_naming_the_file(tiny_setup, tmp_path, capsys):
    """The header passes the up-front check, the pixels do not decode: exit 1, no worker traceback."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_setup["data"], data)
    name = (data / "splits" / "test.txt").read_text().split()[3]
    rgb = data / "rgb" / f"{name}.png"
    rgb.write_bytes(rgb.read_bytes()[:120])  # the IHDR survives, the image data does not
    assert _run_cli(tiny_setup["ckpts"]["lf"], data, tmp_path / "out", "--workers", "2") == 1
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and str(rgb) in line[0] and "Traceback" not in err and "worker" not in err


def test_threads_flag_and_one_thread_per_loader_worker(tiny_setup, tmp_path):
    import cv2

    from m3l_core.data.loading import make_loader

    before = torch.get_num_threads()
    try:
        assert _run_cli(tiny_setup["ckpts"]["lf"], tiny_setup["data"], tmp_path / "o", "--threads", "1",
                        "--num-examples", "0") == 0
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before)

    class Probe(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])

    cv2.setNumThreads(2)
    seen = torch.cat(list(make_loader(Probe(), collate_fn=torch.stack, num_workers=2, batch_size=1)))
    assert seen.tolist() == [[1, 1], [1, 1]]
