"""The app's view logic on tiny saved models (app.views.*, no Streamlit): the per-prompt analysis against
the prompt diff (probes.diff.prompts), the method views (LoFiT, NEFT, CAFT, LoRA, weight changes), load errors and run-results discovery.
The page itself (Streamlit's testing API) is tested in tests/test_app_page.py; ``tiny_dirs`` is in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

PROMPT = "The apple is in Box F, the key is in Box C. Box C contains the"


# --- view logic (no streamlit) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_pair(tiny_dirs):
    from workbench.models.tuned import load_pair

    base, tuned, *_ = tiny_dirs
    return load_pair(str(base), str(tuned), "cpu")


@pytest.fixture(scope="module")
def run_pair(tiny_dirs):
    from workbench.models.tuned import load_pair

    base, _, run, *_ = tiny_dirs
    return load_pair(str(base), str(run), "cpu")


def test_analysis_agrees_with_model_diff_compare(model_pair):
    from probes.diff.prompts import compare
    from app.views.analysis import analyse_prompt, tokenize_prompt

    pair = model_pair.pair
    a = analyse_prompt(pair, PROMPT)
    ref = compare(pair, tokenize_prompt(pair, PROMPT))
    close = lambda x, y: torch.testing.assert_close(x.float(), y.float(), atol=1e-4, rtol=1e-4)  # noqa: E731
    close(a.kl, ref.kl)
    close(a.resid_diff_norm, ref.resid_diff_norm)
    close(a.resid_rel_diff, ref.resid_rel_diff)
    close(a.resid_cosine, ref.resid_cosine)
    close(a.head_diff[:, -1], ref.head_diff_norm)
    assert a.n_pos == len(a.input_ids) == a.patterns["base"].shape[-1]
    assert float(a.kl.max()) > 0 and float(a.resid_diff_norm[-1].min()) > 0  # a perturbed copy differs everywhere
    base_logits, tuned_logits = pair.logits(a.input_ids[None])
    for role, logits in (("base", base_logits), ("tuned", tuned_logits)):
        probs = logits[0].float().softmax(-1)
        assert torch.equal(a.top_ids[role][:, 0], probs.argmax(-1))
        # the lens at the last layer is the model's own output
        assert torch.equal(a.lens_top_ids[role][-1], a.top_ids[role][:, 0])
        close(a.lens_final_prob[role][-1], a.top_probs[role][:, 0])
        torch.testing.assert_close(a.patterns[role].float().sum(-1), torch.ones(a.patterns[role].shape[:-1]), atol=2e-3, rtol=0)


def test_run_folder_pair_shares_weights_and_only_intervened_heads_change_first(run_pair):
    from app.views.analysis import analyse_prompt
    from app.views.lofit import lofit_view
    from app.views.method import method_view

    pair = run_pair.pair
    assert run_pair.tuned_kind == "intervention" and run_pair.method == "lofit" and pair.base is pair.tuned
    a = analyse_prompt(pair, PROMPT)
    # offsets on heads (0, 1) and (1, 0): at layer 0 only head 1 changes; nothing changes before layer 0's attention
    assert float(a.head_diff[0, :, 0].abs().max()) == 0.0 and float(a.head_diff[0, :, 1].min()) > 0
    assert float(a.patterns["tuned"][0].float().sub(a.patterns["base"][0].float()).abs().max()) == 0.0
    view = method_view(run_pair, a)
    assert view.marked_heads == [[0, 1], [1, 0]] and len(view.figures) == 2
    w_o = pair.base.model.layers[0].self_attn.o_proj
    w_o = getattr(w_o, "original_component", w_o).weight.detach()
    d_head = run_pair.intervention.dims.d_head
    expected = float((w_o[:, d_head : 2 * d_head] @ run_pair.intervention.offsets[0].detach()).norm())
    assert view.table[0]["‖W_O,h v_h‖"] == pytest.approx(expected, rel=1e-5)
    assert lofit_view(run_pair.intervention, pair.base).figures[0].data[0].z[0][1] == pytest.approx(expected, rel=1e-5)


def test_prompt_limits(model_pair):
    from app.views.analysis import MAX_PROMPT_TOKENS, tokenize_prompt
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match=f"at most {MAX_PROMPT_TOKENS} tokens"):
        tokenize_prompt(model_pair.pair, "Hello world " * 400)
    with pytest.raises(ConfigError, match="empty"):
        tokenize_prompt(model_pair.pair, "   ")
    assert tokenize_prompt(model_pair.pair, "Hello", max_tokens=4).shape[0] == 1


def test_the_app_adds_its_key_and_lock_to_the_library_pair(tiny_dirs):
    """The library's LoadedPair carries no app state; the app's SharedPair adds the cache key and the lock."""
    import dataclasses

    from app.views.load import SharedPair, load_shared_pair
    from workbench.models.tuned import LoadedPair

    assert not {"key", "lock"} & {f.name for f in dataclasses.fields(LoadedPair)}
    base, tuned, *_ = tiny_dirs
    a, b = (load_shared_pair(str(base), str(tuned), "cpu") for _ in range(2))
    assert isinstance(a, SharedPair) and isinstance(a, LoadedPair) and a.tuned_kind == "model"
    assert len(a.key) == 16 and a.key == b.key and a.lock is not b.lock and a.lock.acquire(blocking=False)


def test_load_errors_are_workbench_errors(tiny_dirs, tmp_path):
    from workbench.errors import ConfigError, MismatchError, ModelNotFoundError
    from workbench.models.tuned import load_pair

    base, _, run, other, _ = tiny_dirs
    with pytest.raises(MismatchError, match="cannot be compared"):
        load_pair(str(base), str(other), "cpu")
    with pytest.raises(MismatchError, match="trained on"):  # an adapter trained on another model
        load_pair(str(other), str(run), "cpu")
    with pytest.raises(ModelNotFoundError):
        load_pair(str(base), str(tmp_path / "missing"), "cpu")
    with pytest.raises(ModelNotFoundError, match="neither a run folder"):
        load_pair(str(base), str(tmp_path), "cpu")
    with pytest.raises(ConfigError, match="no tuned model"):
        load_pair(str(base), "", "cpu")
    with pytest.raises(ConfigError, match="not available"):
        load_pair(str(base), str(run), "tpu")


def test_view_figures(model_pair):
    from app.views import figures as vf
    from app.views.analysis import analyse_prompt

    a = analyse_prompt(model_pair.pair, PROMPT)
    n = a.n_pos
    bars, kl, lens, lines = vf.prediction_figures(a, pos=3)
    assert [t.x for t in bars.data][0][-1] == pytest.approx(float(a.top_probs["base"][3, 0]))  # most likely on top
    assert len(kl.data[0].y) == n and len(lens.data) == 2 and len(lens.data[0].z) == 2 and len(lines.data) == 2
    assert len(vf.prediction_table(a, -1)) == a.top_ids["base"].shape[1]
    pattern, overview = vf.attention_figures(a, 1, 0)
    torch.testing.assert_close(torch.tensor(pattern.data[2].z), torch.tensor(pattern.data[1].z) - torch.tensor(pattern.data[0].z))
    assert torch.tensor(pattern.data[0].z).shape == (n, n) and torch.tensor(overview.data[0].z).shape == (2, 2)
    with pytest.raises(IndexError):
        vf.attention_figures(a, 2, 0)
    heads, neurons = vf.head_neuron_figures(a, pos=None)
    assert torch.tensor(heads.data[0].z).shape == (2, 2) and len(neurons.data) == 3
    ranking = a.neurons_at[-1]
    assert ranking.delta == pytest.approx([t - b for b, t in zip(ranking.base, ranking.tuned)])
    assert abs(ranking.delta[0]) == pytest.approx(float((a.mlp_post["tuned"][:, -1].float() - a.mlp_post["base"][:, -1].float()).abs().max()), rel=1e-3)
    assert len(vf.residual_figures(a)) == 3
    # the logit lens over the last 5 positions only: the same numbers, and no lens line before its window
    short = analyse_prompt(model_pair.pair, PROMPT, lens_positions=5)
    assert short.lens_start == n - 5 and torch.equal(short.lens_top_ids["tuned"], a.lens_top_ids["tuned"][:, -5:])
    torch.testing.assert_close(short.lens_final_prob["base"], a.lens_final_prob["base"][:, -5:])
    assert len(vf.prediction_figures(short, pos=0)) == 3 and len(vf.prediction_figures(short, pos=-1)) == 4


def test_method_views_for_models_and_other_interventions(model_pair, run_pair):
    from app.views.method import generic_view, method_view

    view = method_view(model_pair)  # a tuned model: relative weight change per layer and module
    assert view.title == "Weight changes" and view.figures and all(r["‖ΔW‖/‖W_base‖"] > 0 for r in view.table)
    generic = generic_view(run_pair.intervention)
    assert generic.table[0]["name"] == "offsets" and generic.table[0]["‖·‖₂"] == pytest.approx(float(run_pair.intervention.offsets.detach().norm()))


def test_neft_view(tiny_dirs):
    import workbench.methods.neft as neft
    from app.views.analysis import analyse_prompt
    from workbench.models.tuned import LoadedPair
    from app.views.method import method_view
    from workbench.models import load_model
    from workbench.pair import ModelPair

    model, tok, info = load_model(tiny_dirs[0], device="cpu")
    inter = neft.NeftIntervention(neft.NeftConfig(neurons=[[0, 3], [1, 5], [1, 7]], init_std=0.3), info.to_dict(), generator=torch.Generator().manual_seed(0))
    loaded = LoadedPair(ModelPair(model, model, tok, info, info, tuned_intervention=inter), "b", "t", "cpu", "intervention", inter)
    a = analyse_prompt(loaded.pair, PROMPT)
    view = method_view(loaded, a, pos=-1)
    assert len(view.table) == 3 and len(view.figures) == 3
    assert view.table[0]["‖Δ down column‖"] == pytest.approx(float(inter.d_down[0].detach().norm()), rel=1e-5)
    act = view.figures[2].data
    assert {tuple(d.x) for d in act} == {tuple(act[0].x)} and len(act[0].x) == 3
    assert max(abs(t - b) for b, t in zip(act[0].y, act[1].y)) > 0  # the deltas change the selected neurons


def test_run_results_discovery(tiny_dirs, tmp_path):
    import ast

    import plotly.graph_objects as go

    from app.views import runs as runs_view
    from app.views.runs import find_results, flatten_metrics, metric_tables, run_figures
    from studies.common import write_figure_files

    results = find_results(tiny_dirs[4])
    assert [r.kind for r in results] == ["quickstart"]
    figs, notes = run_figures(results[0])  # the quickstart's figures, from the JSON files it wrote
    assert len(figs) == 7 and not notes
    assert figs[0].layout.title.text == "Held-out accuracy" and figs[-1].layout.title.text.startswith("LoFiT step 1")
    rows = {r["metric"]: r["value"] for r in flatten_metrics(results[0].record["metrics"])}
    assert rows["tuned.accuracy"] == 0.9 and "select_losses" not in rows
    tables = metric_tables({"table": [{"method": "lofit", "acc": {"test": 0.5}}], "evals": [1, 2]})
    assert tables == {"table": [{"method": "lofit", "acc.test": 0.5}]}
    # a run of a study the app knows nothing about: its figures come from figures/*.json, one unreadable
    (tmp_path / "a" / "figures").mkdir(parents=True)
    (tmp_path / "a" / "results.json").write_text(json.dumps({"run_info": {"config": {"study": "no_such_study"}}, "metrics": {"x": 1}}))
    (tmp_path / "a" / "figures" / "f.json").write_text(go.Figure(go.Bar(y=[1, 2])).to_json())
    (tmp_path / "a" / "figures" / "g.json").write_text("{not a figure")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text("{not json")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text(json.dumps({"run_info": {"config": {"study": "bare"}}, "metrics": {"x": 1}}))
    found = {r.run_dir.name: r for r in find_results(tmp_path)}
    assert found["b"].kind == "unreadable" and found["b"].error
    figs, notes = run_figures(found["a"])
    assert len(figs) == 1 and len(notes) == 1 and "g.json" in notes[0]
    figs, notes = run_figures(found["d"])  # no figure files: metrics only, and a note says why
    assert figs == [] and "no figure files" in notes[0]
    # a study run (named in run_info.config["study"]) whose figures its writer saved: drawn from the files, in name order
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(json.dumps({"run_info": {"config": {"study": "fake_study"}}, "metrics": {"ys": [3, 4]}}))
    write_figure_files({"bars": go.Figure(go.Bar(y=[3, 4])), "a_line": go.Figure(go.Scatter(y=[5]))}, tmp_path / "c" / "figures")
    [fake] = [r for r in find_results(tmp_path) if r.run_dir.name == "c"]
    figs, notes = run_figures(fake)
    assert fake.kind == "fake_study" and not notes and list(figs[0].data[0].y) == [5] and list(figs[1].data[0].y) == [3, 4]
    assert {"bars.html", "a_line.html", "plotly.min.js"} <= {p.name for p in (tmp_path / "c" / "figures").iterdir()}
    tree = ast.parse(Path(runs_view.__file__).read_text())  # the view never imports study code, nor loads it by name
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m.split(".")[0] for m in imported} & {"studies", "importlib"}


def test_caft_view_from_an_adapter_and_from_a_run_folder(tiny_dirs, tmp_path):
    import workbench.methods.caft as caft
    from app.views.analysis import analyse_prompt
    from app.views.method import method_views
    from workbench.artifacts import atomic_save_tensors
    from workbench.methods import save_intervention
    from workbench.models import load_model
    from workbench.models.tuned import load_pair

    base, _, run, *_ = tiny_dirs
    _, _, info = load_model(base, device="cpu")
    g = torch.Generator().manual_seed(0)
    ablation = caft.CaftIntervention.from_directions({0: torch.randn(2, 16, generator=g), 1: torch.randn(1, 16, generator=g)}, info.to_dict(), source="test")
    save_intervention(tmp_path / "caft-adapter", ablation, info)  # the ablation itself as the tuned side
    loaded = load_pair(str(base), str(tmp_path / "caft-adapter"), "cpu")
    a = analyse_prompt(loaded.pair, PROMPT)
    [view] = method_views(loaded, a, pos=-1)
    assert view.title == "CAFT directions" and view.uses_position and len(view.figures) == 2
    heat = view.figures[0].data
    assert list(heat[0].y) == ["L0.q0", "L0.q1", "L1.q0"]
    expected = a.resid_post["base"][1] @ ablation.basis(1)[:, 0]
    torch.testing.assert_close(torch.tensor(heat[0].z[2]), expected, atol=1e-5, rtol=1e-5)
    # a LoFiT run folder that also holds the ablation it was trained under (train_caft's ablation.safetensors)
    import shutil

    shutil.copytree(run, tmp_path / "run")
    atomic_save_tensors(tmp_path / "run" / "lofit" / "ablation.safetensors", ablation.state_dict())
    loaded = load_pair(str(base), str(tmp_path / "run"), "cpu")
    views = method_views(loaded, analyse_prompt(loaded.pair, PROMPT), pos=2)
    assert [v.title for v in views] == ["LoFiT heads and offsets", "CAFT directions"]
    assert views[1].table[1] == {"layer": 1, "directions": 1, "source": "lofit/ablation.safetensors"}


def test_lora_run_folder_binds_before_the_bridge(tiny_dirs, tmp_path):
    """A method whose parameters live inside the model (peft LoRA) is inserted before the TransformerBridge
    rewires the model; the generic view lists its tensors."""
    from app.views.analysis import analyse_prompt
    from app.views.method import method_view
    from workbench.config import config_from_dict
    from workbench.methods import get_method, save_intervention
    from workbench.models import load_model
    from workbench.models.tuned import load_pair

    model, _, info = load_model(tiny_dirs[0], device="cpu")
    spec = get_method("lora")
    lora = spec.intervention_cls(config_from_dict(spec.config_cls, {"r": 2}), info.to_dict())
    lora.bind(model)
    with torch.no_grad():
        for p in lora.parameters():
            p.add_(0.1)
    save_intervention(tmp_path / "lora-run" / "adapter", lora, info)
    loaded = load_pair(str(tiny_dirs[0]), str(tmp_path / "lora-run"), "cpu")
    a = analyse_prompt(loaded.pair, PROMPT)
    assert float(a.kl.min()) > 0 and float(a.resid_diff_norm[0].min()) > 0  # q/k/v/o of layer 0 changed
    view = method_view(loaded, a)
    assert view.title == "lora intervention" and any("lora_A" in r["name"] for r in view.table) and view.figures
