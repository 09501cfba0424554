"""The study notebooks open with the committed default run (``results/default.json``), drawn by the study's own
figure functions, and are committed with those outputs.

Here (fast, no model): the "default-results" cells of each notebook run in a kernel whose working directory is a
temporary folder; the numbers they print must be the json's, their figures must be ``figures(default.json)``, and
the committed outputs must be those a fresh run gives. The whole notebook (the tiny rerun) runs in each study's
``real`` test, which calls :func:`check_default_section` on the executed notebook too.

``python tests/test_notebooks.py --write`` re-renders the committed outputs (default-results cells only; the tiny
rerun's cells are stored without outputs).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("context_knob", "entity_tracking", "priming", "tuco")
TAG = "default-results"
PLOTLY = "application/vnd.plotly.v1+json"
MAX_BYTES = 2_000_000


def notebook_path(study: str) -> Path:
    return ROOT / "studies" / study / f"{study}.ipynb"


def default_json(study: str) -> Path:
    return ROOT / "studies" / study / "results" / "default.json"


def _tagged(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def run_default_section(study: str, cwd: Path):
    """Execute a copy of the notebook holding only its default-results cells, in ``cwd``; return it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(notebook_path(study), as_version=4)
    nb.cells = [c for c in nb.cells if _tagged(c)]
    for c in nb.cells:
        c.outputs, c.execution_count = [], None
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" and _tagged(c) for o in c.get("outputs", [])]


def printed(nb) -> str:
    return "".join(o["text"] for o in _outputs(nb) if o.get("output_type") == "stream" and o.get("name") == "stdout")


def plotly_figures(nb) -> list[dict]:
    return [o["data"][PLOTLY] for o in _outputs(nb) if PLOTLY in o.get("data", {})]


def _rows(text: str) -> dict[str, list[float]]:
    """Table rows: a label followed by numbers ('-' is a missing number, kept as None)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            out[parts[0]] = [None if p == "-" else float(p) for p in parts[1:]]
        except ValueError:
            continue
    return out


def expected_rows(study: str, d: dict) -> dict[str, list[float | None]]:
    """The table rows the notebook must print, read here from the json independently of the notebook's code."""
    m = d["metrics"]
    if study == "context_knob":
        rows = {w: [m["accuracy"][w][k] for k in ("context_accuracy", "prior_accuracy", "pair_accuracy")]
                for w in ("before", "after")}
        for model in ("tuned", "untuned"):
            i, s, e = m["interchange_accuracy"][model], m["separation"][model], m["steering"]["ends"][model]
            rows[model] = [i["u"], i["random"], i["none"], s["auc"], s["auc_sign_free"], e["context_rate_at_prior_end"],
                           e["context_rate_at_context_end"]]
        return rows
    if study == "entity_tracking":
        rows = {name: [a["accuracy_among_objects"], a["logit_difference"], a["arithmetic_exact_match"],
                       m["faithfulness"][name]["faithfulness"]] for name, a in m["accuracy"].items()}
        order = [*m["circuits"]["base"]["groups"], "circuit", "all_heads"]
        rows.update({f"cmap_{name}": [c["patched"][g] for g in order] for name, c in m["cmap"].items()})
        return rows
    if study == "priming":
        return {arm: [a["n"], a["mean_log10_priming"], a["mean_memorization"], a.get("median_priming_ratio_reduction")]
                for arm, a in m["arms"].items()}
    return {}


def _figure_key(fig: dict) -> tuple[str, str]:
    """A figure's data and title as canonical json (float formatting is the same on both sides)."""
    title = fig.get("layout", {}).get("title", {})
    return json.dumps(fig["data"], sort_keys=True), json.dumps(title, sort_keys=True)


def check_default_section(nb, study: str) -> None:
    """The executed notebook's default-results outputs come from ``results/default.json``: no errors, the printed
    table equals the json's numbers, every figure is the study's ``figures()`` of the json, in order."""
    import importlib

    import plotly.io as pio

    outs = _outputs(nb)
    assert outs, f"{study}: the default-results cells have no outputs"
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = printed(nb)
    path = default_json(study)
    if not path.exists():
        assert "No committed default run" in text and not plotly_figures(nb)
        return
    d = json.loads(path.read_text())
    assert f"commit {d['run_info']['commit'][:8]}" in text and d["run_info"]["config"]["model"] in text
    rows = _rows(text)
    for label, want in expected_rows(study, d).items():
        got = rows.get(label)
        assert got is not None and len(got) == len(want), (study, label, got, want)
        for g, w in zip(got, want):
            assert (g is None) == (w is None), (study, label, got, want)
            if w is not None:
                assert math.isclose(g, w, abs_tol=5.01e-4), (study, label, got, want)  # printed with 3 decimals
    if study == "priming":
        sp = d["metrics"]["spearman_prior_vs_priming"]
        assert f"rho {sp['rho']:.3f}, p {sp['p']:.3g}, n {sp['n']}" in text
    figure_functions = importlib.import_module(f"studies.{study}.figures").figures
    want_figs = [json.loads(pio.to_json(f)) for f in figure_functions(d).values()]
    got_figs = plotly_figures(nb)
    assert [_figure_key(f) for f in got_figs] == [_figure_key(f) for f in want_figs]


@pytest.mark.parametrize("study", STUDIES)
def test_default_section_renders_committed_results(study, tmp_path):
    """Fresh execution (working directory: tmp) prints the json's numbers and draws figures(default.json)."""
    nb = run_default_section(study, tmp_path)
    check_default_section(nb, study)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("study", STUDIES)
def test_committed_outputs_are_current_and_small(study):
    """The notebook file carries the default-results outputs a fresh run gives, and nothing from a tiny rerun."""
    nbformat = pytest.importorskip("nbformat")
    path = notebook_path(study)
    assert path.stat().st_size < MAX_BYTES
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert _tagged(nb.cells[2]), "the default-results section comes first, after the title"
    check_default_section(nb, study)
    assert not [c for c in nb.cells if c.cell_type == "code" and not _tagged(c) and c.outputs]


def write(studies=STUDIES) -> None:
    """Render the default-results cells into the committed notebooks (run from anywhere; writes only the .ipynb)."""
    import tempfile

    import nbformat

    for study in studies:
        path = notebook_path(study)
        nb = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = run_default_section(study, Path(tmp))
        check_default_section(fresh, study)
        done = iter(fresh.cells)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            if _tagged(cell):
                src = next(done)
                keep = [o for o in src.outputs if o.get("name") != "stderr"]  # import warnings carry local paths
                cell.outputs, cell.execution_count = copy.deepcopy(keep), src.execution_count
            else:
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_notebooks.py --write")
    write()
