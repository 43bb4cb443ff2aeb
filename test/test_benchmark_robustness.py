"""The robustness benchmark: seed aggregation, Table 2/5 shapes, run planning and reuse, one real run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from m3l_core import benchmark_robustness as br
from m3l_core.benchmark_robustness import BenchmarkError, BenchSettings, Variant, make_record, plan_runs
from m3l_core.benchmark_tables import aggregate, fmt_cell, markdown_table2, markdown_table5, stat, table2, table5
from m3l_core.benchmark_tables import write_outputs

REPO = Path(__file__).resolve().parents[1]


def _scores(miou: float) -> dict:
    return {"miou": miou, "macc": miou + 1, "pixel_acc": miou + 2, "per_class_iou": {"a": miou}, "num_pixels": 4}


def _record(variant: str, seed: int, *, rgbd=None, rgb=None, depth=None, cpu: float = 60.0) -> dict:
    m = {"rgbd": rgbd, "rgb": rgb, "depth": depth}
    present = [v for v in m.values() if v is not None]
    metrics = {k: None if v is None else _scores(v) for k, v in m.items()}
    metrics["mm_robust"] = _scores(sum(present) / 3) if len(present) == 3 else None
    return {"variant": variant, "seed": seed, "metrics": metrics,
            "train": {"cpu_seconds": cpu, "wall_seconds": 2 * cpu}, "eval": {"cpu_seconds": 6.0, "wall_seconds": 9.0}}


# ---------------------------------------------------------------- aggregation and tables

def test_stat_is_mean_and_sample_std_and_one_run_has_no_std():
    s = stat([10.0, 12.0, 14.0])
    assert s["mean"] == pytest.approx(12.0) and s["std"] == pytest.approx(2.0) and s["n"] == 3  # ddof=1
    assert fmt_cell(s) == "12.00 ± 2.00 (3)"
    one = stat([7.5])
    assert one["std"] is None and fmt_cell(one) == "7.50 (1)"
    assert stat([]) is None and fmt_cell(None) == "-"


def test_table2_combines_the_uni_modal_models_into_one_row_and_leaves_out_empty_rows():
    records = [_record("uni_rgb", s, rgb=v) for s, v in enumerate((30.0, 31.0, 32.0))]
    records += [_record("uni_depth", s, depth=v) for s, v in enumerate((40.0, 44.0))]
    records += [_record("lf_sup", s, rgbd=50.0 + s, rgb=20.0, depth=10.0 + 2 * s) for s in range(3)]
    agg = aggregate(records)
    assert agg["uni_rgb"]["depth"] is None and agg["lf_sup"]["mm_robust"]["miou"]["n"] == 3
    assert agg["lf_sup"]["rgbd"]["macc"]["mean"] == pytest.approx(52.0)
    rows, left_out = table2(agg)
    assert [r["method"] for r in rows] == ["Uni-modal", "LF"]
    assert "TF" in left_out and "LF + M3L" in left_out and "Uni-modal" not in left_out
    md = markdown_table2(rows)
    assert md[0] == "| Method | RGB | Depth | RGB-D | MM-Robust |"
    assert md[2] == "| Uni-modal | 31.00 ± 1.00 (3) | 42.00 ± 2.83 (2) | - | - |"
    # LF: RGB 20 (std 0), depth 10/12/14, RGB-D 50/51/52, MM-Robust (80+3s)/3 per seed.
    assert md[3] == "| LF | 20.00 ± 0.00 (3) | 12.00 ± 2.00 (3) | 51.00 ± 1.00 (3) | 27.67 ± 1.00 (3) |"


def test_table5_has_the_papers_check_mark_columns():
    records = [_record(v, 0, rgbd=40.0, rgb=30.0, depth=20.0) for v in ("lf_m3l", "lf_md", "lf_mt", "lf_sup")]
    rows, left_out = table5(aggregate(records))
    assert [r["method"] for r in rows] == ["LF", "LF + MD", "LF + MT (unlabeled)", "LF + M3L"]  # the paper's order
    assert left_out[:4] == ["TF", "URN", "TF + MD", "URN + MD"]
    md = markdown_table5(rows)
    assert md[0].startswith("| Method | Modality Dropout | Unlabeled | M3L | RGB | Depth | RGB-D | MM-Robust |")
    assert md[2] == "| LF | - | - | - | 30.00 (1) | 20.00 (1) | 40.00 (1) | 30.00 (1) |"
    assert md[3].startswith("| LF + MD | ✓ | - | - |") and md[4].startswith("| LF + MT (unlabeled) | - | ✓ | - |")
    assert md[5].startswith("| LF + M3L | ✓ | ✓ | ✓ |")


def test_write_outputs_reports_cpu_time_and_rows_left_out(tmp_path):
    records = [_record("lf_sup", s, rgbd=50.0, rgb=20.0, depth=10.0, cpu=60.0 * (s + 1)) for s in range(2)]
    settings = {**BenchSettings().to_dict(), "sets": ["model.backbone=tiny"]}
    paths = write_outputs(tmp_path, records, variants=["lf_sup", "lf_md"], seeds=[0, 1], settings=settings,
                          command="python scripts/benchmark_robustness.py", machine="test machine",
                          data_times={"cpu_seconds": 12.0, "wall_seconds": 15.0}, failed={"lf_md_seed0": "see x"})
    summary = json.loads(paths["json"].read_text())
    assert summary["timings"]["total_cpu_seconds"] == pytest.approx(60 + 120 + 2 * 6 + 12)
    assert summary["timings"]["total_wall_seconds"] == pytest.approx(120 + 240 + 2 * 9 + 15)
    assert summary["aggregates"]["lf_sup"]["rgbd"]["miou"]["std"] == pytest.approx(0.0)
    assert set(summary["runs"]["lf_sup"]) == {"0", "1"} and summary["failed"] == {"lf_md_seed0": "see x"}
    md = paths["md"].read_text()
    assert "Total CPU time: 3.4 min" in md and "| lf_sup | 1 | 20.00 | 10.00 | 50.00 |" in md
    assert "LF + MD" in md.split("Left out (no finished runs):")[2]  # Table 5's list names the missing row
    assert "extra `--set` model.backbone=tiny" in md and "lf_md_seed0: see x" in md
    assert paths["png"].stat().st_size > 1000
    # The JSON's rows give back the Markdown tables (what a docs test can quote from the committed JSON).
    for fmt, key in ((markdown_table2, "table2"), (markdown_table5, "table5")):
        assert "\n".join(fmt(summary[key])) in md


# ---------------------------------------------------------------- planning and reuse

@pytest.fixture()
def configs(tmp_path, monkeypatch) -> Path:
    """A private copy of config/train, so a test can edit a config file of the chain."""
    d = tmp_path / "configs"
    shutil.copytree(REPO / "config" / "train", d)
    monkeypatch.setattr(br, "CONFIG_DIR", d)
    return d


def test_plan_starts_the_two_stage_run_from_its_own_seeds_source(tmp_path, configs):
    bench = BenchSettings(iters=300)
    plans = plan_runs(["lf_m3l_init", "lf_sup", "lf_sup_2x"], [0, 1], bench, tmp_path, reuse=False)
    keys = [p.key for p in plans]
    assert keys.index("lf_sup_seed1") < keys.index("lf_m3l_init_seed0")  # sources first
    init = {p.key: p for p in plans}["lf_m3l_init_seed1"]
    assert init.depends_on == "lf_sup_seed1"
    args = init.train_args(tmp_path)
    assert f"model.init={tmp_path}/runs/lf_sup/seed1/model.safetensors" in args
    assert "optim.lr=0.0001" in args and "max_iters=300" in args and "seed=1" in args and "--threads" in args
    assert "max_iters=600" in {p.key: p for p in plans}["lf_sup_2x_seed0"].train_args(tmp_path)
    assert "data.crop_size=[96,128]" in args and "eval_every=50" in args


def test_plan_refuses_a_missing_source_or_config_before_any_work(tmp_path, configs, monkeypatch):
    with pytest.raises(BenchmarkError, match="include it in --variants"):
        plan_runs(["lf_m3l_init"], [0], BenchSettings(), tmp_path, reuse=False)
    monkeypatch.setitem(br.VARIANTS, "tf", Variant("tf", "TF", "synthetic_no_such_tf.yaml"))
    with pytest.raises(BenchmarkError, match=r"variant tf: config/train/synthetic_no_such_tf.yaml does not exist"):
        plan_runs(["lf_sup", "tf"], [0], BenchSettings(), tmp_path, reuse=False)
    assert plan_runs(["lf_sup"], [0], BenchSettings(), tmp_path, reuse=False)  # only requested configs matter
    with pytest.raises(BenchmarkError, match="unknown variant"):
        plan_runs(["lf_nope"], [0], BenchSettings(), tmp_path, reuse=False)
    with pytest.raises(BenchmarkError, match="seeds"):
        plan_runs(["lf_sup"], [1, 1], BenchSettings(), tmp_path, reuse=False)


def _finish(plans, work: Path) -> None:
    """Fake finished runs: a record and a checkpoint file for each plan."""
    for p in plans:
        (p.run_dir(work)).mkdir(parents=True, exist_ok=True)
        (p.run_dir(work) / "model.safetensors").write_bytes(b"x")
        rec = make_record(p, work, _record(p.variant.name, p.seed, rgbd=1.0, rgb=1.0, depth=1.0)["metrics"],
                          train={"cpu_seconds": 1.0, "wall_seconds": 1.0},
                          evaluation={"cpu_seconds": 1.0, "wall_seconds": 1.0}, finished_at="t")
        br.write_json_atomic(p.record_path(work), rec)


def test_reuse_only_with_identical_settings_config_content_and_source(tmp_path, configs):
    work, names, seeds = tmp_path / "work", ["lf_sup", "lf_m3l_init"], [0, 1]
    bench = BenchSettings(iters=4, sets=("model.backbone=tiny",))
    _finish(plan_runs(names, seeds, bench, work, reuse=False), work)
    reused = lambda b: {p.key: p.reuse for p in plan_runs(names, seeds, b, work, reuse=True)}  # noqa: E731
    assert all(reused(bench).values())
    assert not any(p.reuse for p in plan_runs(names, seeds, bench, work, reuse=False))
    assert not any(reused(BenchSettings(iters=5, sets=bench.sets)).values())  # changed N
    assert not any(reused(BenchSettings(iters=4)).values())  # changed --set
    assert not any(reused(BenchSettings(iters=4, sets=bench.sets, crop=(64, 64))).values())
    # A changed file of the M3L chain: the M3L runs train again, LF supervised is kept.
    with open(configs / "framework_m3l.yaml", "a") as f:
        f.write("\n# edited\n")
    assert reused(bench) == {"lf_sup_seed0": True, "lf_sup_seed1": True,
                             "lf_m3l_init_seed0": False, "lf_m3l_init_seed1": False}
    # A base file shared by both (the base: chain is hashed): everything trains again.
    with open(configs / "synthetic_base.yaml", "a") as f:
        f.write("\n# edited\n")
    assert not any(reused(bench).values())


def test_a_retrained_source_retrains_the_runs_started_from_it(tmp_path, configs):
    work, names = tmp_path / "work", ["lf_sup", "lf_m3l_init"]
    bench = BenchSettings(iters=4)
    _finish(plan_runs(names, [0, 1], bench, work, reuse=False), work)
    (work / "runs" / "lf_sup" / "seed1" / "model.safetensors").unlink()  # its checkpoint is gone
    reused = {p.key: p.reuse for p in plan_runs(names, [0, 1], bench, work, reuse=True)}
    assert reused == {"lf_sup_seed0": True, "lf_sup_seed1": False, "lf_m3l_init_seed0": True,
                      "lf_m3l_init_seed1": False}
    (work / "records" / "lf_sup_seed0.json").write_text("{trunc")  # an unreadable record is not a run
    assert not plan_runs(names, [0], bench, work, reuse=True)[1].reuse


# ---------------------------------------------------------------- the script, for real

def _script(*args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_robustness.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


TINY = ("--iters", "2", "--eval-every", "2", "--labeled", "2", "--unlabeled", "2", "--val", "2", "--test", "2",
        "--height", "32", "--width", "40", "--crop", "32", "40", "--set", "model.backbone=tiny")


@pytest.mark.timeout(600)  # 2 short trainings and evaluations in parallel, then a reuse
def test_script_trains_two_seeds_in_parallel_then_reuses_everything(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = ("--variants", "lf_sup", "--seeds", "0", "1", "--jobs", "2", *TINY, "--work", str(work), "--out", str(out))
    res = _script(*cmd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = {p.stem: json.loads(p.read_text()) for p in (work / "records").glob("lf_*.json")}
    assert sorted(records) == ["lf_sup_seed0", "lf_sup_seed1"]
    for rec in records.values():
        assert rec["train"]["cpu_seconds"] > 0 and rec["eval"]["cpu_seconds"] > 0
        assert rec["checkpoint"] == f"runs/{rec['variant']}/seed{rec['seed']}/model.safetensors"
        assert 0 <= rec["metrics"]["mm_robust"]["miou"] <= 100
    assert "seed=1" in records["lf_sup_seed1"]["settings"]["sets"]
    first = json.loads((out / "robustness.json").read_text())
    md = (out / "robustness.md").read_text()
    assert "| LF | " in md and "± " in md and "(2) |" in md
    assert str(tmp_path) not in md and str(tmp_path) not in (out / "robustness.json").read_text()

    # The two-stage variant would start from these runs' checkpoints; a changed N retrains everything.
    plan = _script("--variants", "lf_sup", "lf_m3l_init", *cmd[2:], "--reuse", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "lf_sup_seed1: reuse" in plan.stdout and "lf_m3l_init_seed1: train after lf_sup_seed1" in plan.stdout
    plan = _script(*cmd, "--reuse", "--dry-run", "--iters", "3")
    assert plan.returncode == 0 and "reuse" not in plan.stdout, plan.stdout
    again = _script(*cmd, "--reuse")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": reusing records/") == 2 and "$ " not in again.stdout  # nothing was run
    for key, rec in records.items():
        assert json.loads((work / "records" / f"{key}.json").read_text())["finished_at"] == rec["finished_at"]
    second = json.loads((out / "robustness.json").read_text())
    assert second["aggregates"] == first["aggregates"]
    assert second["timings"]["total_cpu_seconds"] == pytest.approx(first["timings"]["total_cpu_seconds"])


def test_script_names_the_failed_log_and_skips_runs_started_from_it(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    bad = _script("--variants", "lf_sup", "--seeds", "0", *TINY, "--set", "max_iters=0", "--work", str(work))
    assert bad.returncode == 2 and "lf_sup_seed0" in bad.stderr and "max_iters" in bad.stderr  # checked up front
    assert not work.exists()
    # A start checkpoint that is not there fails only when training starts (lf_m3l_init sets its own).
    res = _script("--variants", "lf_sup", "lf_m3l_init", "--seeds", "0", *TINY, "--set",
                  f"model.init={tmp_path / 'missing.safetensors'}", "--work", str(work), "--out", str(out))
    assert res.returncode == 1
    assert "lf_sup_seed0: FAILED (train)" in res.stderr and "lf_sup_seed0_train.log" in res.stderr
    assert "missing.safetensors" in (work / "logs" / "lf_sup_seed0_train.log").read_text()  # the trainer's error
    assert "lf_m3l_init_seed0: skipped, its source run lf_sup_seed0 failed" in res.stdout
    summary = json.loads((out / "robustness.json").read_text())
    assert set(summary["failed"]) == {"lf_sup_seed0", "lf_m3l_init_seed0"} and summary["runs"] == {}


def test_claim_verdicts_follow_the_plan_decision_rule():
    from m3l_core.benchmark_tables import claims, markdown_claims, stat, verdict

    # diff 5, SE = sqrt(1/3 + 1/3) = 0.816: 2 SE = 1.63
    assert verdict(stat([10, 11, 12]), stat([5, 6, 7]))["verdict"] == "A > B"
    assert verdict(stat([5, 6, 7]), stat([10, 11, 12]))["verdict"] == "A < B"
    close = verdict(stat([10, 11, 12]), stat([9, 10, 11]))
    assert close["verdict"] == "not resolved" and close["bound"] == pytest.approx(2 * (2 / 3) ** 0.5)
    assert verdict(stat([10]), stat([1, 2]))["verdict"] == "too few runs"
    assert verdict(None, stat([1, 2])) is None

    def rec(variant, seed, **miou):
        return {"variant": variant, "seed": seed,
                "metrics": {c: {"miou": v, "macc": v, "pixel_acc": v} for c, v in miou.items()}}

    records = [rec("lf_m3l", s, mm_robust=30 + s, rgb=20, depth=20, rgbd=30) for s in range(3)]
    records += [rec("lf_sup", s, mm_robust=20 + s, rgb=20, depth=20, rgbd=30 + s) for s in range(3)]
    rows = {r["claim"]: r for r in claims(aggregate(records))}
    first = rows["1. LF + M3L beats LF on MM-Robust (Table 2)"]
    assert first["verdict"] == "A > B" and first["diff"] == pytest.approx(10)
    assert "1. LF + M3L beats TF on MM-Robust (Table 2)" not in rows  # TF was not run
    assert any("| A > B |" in line for line in markdown_claims(list(rows.values())))
