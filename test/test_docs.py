"""Committed docs say what the tree holds: no machine paths, and every file they name exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"/(?:tmp|home|root|work)/")
# Backticked repo paths (`docs/demo.md`) and relative Markdown links ([x](docs/demo.md)).
CODE_PATH = re.compile(r"`((?:docs|scripts|config|launch|m3l_core|m3l_ros|training|test|requirements)/[\w./-]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Docs named in code and requirement comments; an output path (``--out docs/x.md``) is not a reference.
DOC_REF = re.compile(r"(?<!--out )(?<!--out=)\b(docs/[\w./-]+\.md)\b")


def _text_files(*roots: Path, suffixes: tuple[str, ...]) -> list[Path]:
    files = []
    for root in roots:
        candidates = [root] if root.is_file() else sorted(root.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts]
    return files


def _lines(path: Path):
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return
    for n, line in enumerate(text.splitlines(), 1):
        yield n, line


def _where(path: Path, n: int, line: str) -> str:
    return f"{path.relative_to(REPO)}:{n}: {line.strip()[:160]}"


def test_no_machine_paths_in_docs():
    files = _text_files(REPO / "README.md", REPO / "docs", suffixes=(".md", ".json", ".yaml", ".yml", ".txt", ".csv"))
    assert any(p.name == "metrics.json" for p in files)  # the committed evaluation outputs are checked
    bad = [_where(p, n, line) for p in files for n, line in _lines(p) if MACHINE_PATH.search(line)]
    assert not bad, "machine paths in committed docs (write paths relative to the repo):\n" + "\n".join(bad)


def test_docs_name_only_files_that_exist():
    bad = []
    for p in _text_files(REPO / "README.md", REPO / "docs", suffixes=(".md",)):
        for n, line in _lines(p):
            for m in LINK.finditer(line):
                target = m.group(1).split("#")[0]
                if target and not target.startswith(("http://", "https://", "mailto:")) \
                        and not (p.parent / target).exists():
                    bad.append(_where(p, n, line))
            for m in CODE_PATH.finditer(line):
                if not any(c in m.group(1) for c in "*{<") and not (REPO / m.group(1)).exists():
                    bad.append(_where(p, n, line))
    assert not bad, "docs name files that do not exist:\n" + "\n".join(bad)


def test_code_and_requirements_name_only_docs_that_exist():
    roots = [REPO / d for d in ("m3l_core", "m3l_ros", "scripts", "training", "launch", "config", "requirements")]
    files = _text_files(*roots, suffixes=(".py", ".txt", ".yaml", ".xml", ".sh"))
    bad = [_where(p, n, line) for p in files for n, line in _lines(p)
           for m in DOC_REF.finditer(line) if not (REPO / m.group(1)).exists()]
    assert not bad, "references to docs that do not exist:\n" + "\n".join(bad)


def _row(md: Path, start: str) -> list[float | None]:
    """The numbers of the Markdown table row that starts with ``start`` ("-" is None, bold ignored)."""
    for line in md.read_text().splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == start:
            return [None if c == "-" else float(c) for c in cells[1:]]
    raise AssertionError(f"{md.relative_to(REPO)}: no table row {start!r}")


def _miou(results: dict, cond: str) -> float | None:
    r = results.get(cond)
    return None if r is None else round(r["miou"], 2)


def test_demo_model_doc_quotes_the_committed_metrics():
    m = json.loads((REPO / "docs" / "demo_model" / "metrics.json").read_text())
    row = _row(REPO / "docs" / "demo_model.md", "stage 2 at lr 1e-4: the bundled model")
    assert row == [_miou(m, c) for c in ("rgbd", "rgb", "depth", "mm_robust")]


def test_robustness_doc_quotes_the_committed_benchmark():
    """docs/benchmark_robustness.md shows the committed run's Table 2, Table 5 and claim rows, cell for cell."""
    from m3l_core.benchmark_tables import markdown_claims, markdown_table2, markdown_table5

    summary = json.loads((REPO / "docs" / "benchmark" / "robustness.json").read_text())
    doc = (REPO / "docs" / "benchmark_robustness.md").read_text()
    lines = (markdown_table2(summary["table2"])[2:] + markdown_table5(summary["table5"])[2:]
             + markdown_claims(summary["claims"])[2:])
    assert lines
    for line in lines:
        assert line in doc, line


def test_package_docstrings_list_every_module():
    import m3l_core.data.synthetic
    import m3l_ros

    for package in (m3l_ros, m3l_core.data.synthetic):
        folder = Path(package.__file__).parent
        modules = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("__"))
        missing = [m for m in modules if f"``{m}``" not in package.__doc__]
        assert not missing, f"{folder.relative_to(REPO)}/__init__.py does not list {missing}"
