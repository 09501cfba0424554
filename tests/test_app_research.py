"""What a researcher asks of the app next (issue 15, 1b), on tiny saved models: the logit lens over a chosen window and
tracked answer / contrast tokens (equal to the full lens and to the models' own logits), one-click activation patching
(equal to hand-computed runs), export (safetensors / CSV / HTML that read back), and, in one AppTest session, the page:
token counts before submit, the counterfactual, the tracked tokens and the lens window in the URL, a shared link that
reopens them, patching from the page, and a multi-token "token" refused in the page."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The apple is in Box F, the key is in Box C. Box C contains the"
CORRUPT = "The apple is in Box F, the key is in Box C. Box F contains the"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from app.latency.tiny import save_tiny, save_tiny_run, write_quickstart_like_results
    from app.views.analysis import analyse_prompt
    from workbench.models.tuned import load_pair

    root = tmp_path_factory.mktemp("research")
    base = save_tiny(root / "base")
    run = write_quickstart_like_results(save_tiny_run(root / "runs" / "tiny-run", base))
    loaded = load_pair(str(base), str(run), "cpu")
    full = analyse_prompt(loaded.pair, PROMPT, lens_positions=None)  # the lens over every position, in the analysis
    bare = analyse_prompt(loaded.pair, PROMPT, lens_positions=0)  # the app's: no lens
    return base, run, root / "runs", loaded, full, bare


def test_lens_window_and_tracked_tokens_equal_the_full_lens_and_the_models_logits(tiny):
    from app.views.lens import (
        LENS_WINDOW,
        default_tokens,
        lens_at,
        lens_window,
        resolve_token,
        single_token,
        tracked_logits,
        window_bounds,
    )
    from workbench.errors import ConfigError

    _, _, _, loaded, full, bare = tiny
    pair, n = loaded.pair, bare.n_pos
    assert bare.lens_start == n and bare.lens_top_ids["base"].shape == (2, 0)  # the app's analysis computes no lens
    assert window_bounds(n) == (n - LENS_WINDOW, n) and window_bounds(n, 3, 4) == (3, 7) and window_bounds(5, 4, 9) == (0, 5)
    w = lens_window(pair, bare, 4, 9)
    for role in ("base", "tuned"):
        assert torch.equal(w.top_ids[role], full.lens_top_ids[role][:, 4:9])
        torch.testing.assert_close(w.top_probs[role], full.lens_top_probs[role][:, 4:9])
        torch.testing.assert_close(w.final_prob[role], full.lens_final_prob[role][:, 4:9])
    assert set(w.vocab) == set(torch.cat([w.top_ids["base"].flatten(), w.top_ids["tuned"].flatten()]).tolist())
    with pytest.raises(ConfigError, match="outside"):
        lens_window(pair, bare, 3, n + 1)
    # every layer at one position: the same probabilities as the full lens gives the final top-1
    own = lens_at(pair, bare, 7, bare.top_ids["base"][7, :1])
    torch.testing.assert_close(own["base"][:, 0], full.lens_final_prob["base"][:, 7])
    # tracked tokens: at the last layer, the models' own logits (so the logit difference is the output's, in nats)
    ids = torch.tensor(default_tokens(bare))
    assert ids[0] == bare.top_ids["base"][-1, 0] and resolve_token(pair, bare, bare.vocab[int(ids[1])], prefer=int(ids[1])) == ids[1]
    assert resolve_token(pair, bare, " key") == single_token(pair, " key")
    tracked = tracked_logits(pair, bare, ids)
    base_logits, tuned_logits = pair.logits(bare.input_ids[None])
    for role, logits in (("base", base_logits), ("tuned", tuned_logits)):
        assert tracked[role].shape == (2, n, 2)
        torch.testing.assert_close(tracked[role][-1], logits[0][:, ids].float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="not one"):
        single_token(pair, " apple key coin")


def test_patching_equals_hand_computed_runs(tiny):
    from app.views.patching import DIRECTIONS, SITES, patch, patch_figure, patch_rows
    from workbench.errors import ConfigError

    _, _, _, loaded, _, bare = tiny
    pair = loaded.pair
    ia, ic = int(bare.top_ids["base"][-1, 0]), int(bare.top_ids["base"][-1, 1])
    metric = lambda logits: float(logits[0, -1, ia] - logits[0, -1, ic])
    clean_ids, corrupt_ids = (pair.tokenize([p])[0] for p in (PROMPT, CORRUPT))
    differs = [p for p in range(clean_ids.shape[1]) if clean_ids[0, p] != corrupt_ids[0, p]]
    assert len(differs) == 1
    k = differs[0]
    # clean ← corrupt in the base model, per (layer, position) of hook_resid_pre: at layer 0 the residual stream is the
    # embedding, so patching the one differing position is exactly the corrupt run; other layer-0 positions do nothing
    r = patch(pair, PROMPT, CORRUPT, ia, ic, "clean ← corrupt, base model", SITES[2])
    expected = metric(pair.logits(corrupt_ids)[0]) - metric(pair.logits(clean_ids)[0])
    assert r.effects.shape == (2, bare.n_pos)
    assert float(r.effects[0, k]) == pytest.approx(expected, abs=1e-4)
    assert float(r.effects[0, :k].abs().max()) < 1e-5
    # base ← tuned (CMAP) per head at the last position: LoFiT offsets on heads (0, 1) and (1, 0); head (0, 0)'s output
    # at layer 0 is the same in both models, so patching it changes nothing
    heads = patch(pair, PROMPT, None, ia, ic, "base ← tuned (same prompt)", SITES[0])
    assert heads.effects.shape == (2, 2) and abs(float(heads.effects[0, 0])) < 1e-5 and float(heads.effects[0, 1].abs()) > 1e-2
    layers = patch(pair, PROMPT, None, ia, ic, "tuned ← base (same prompt)", SITES[1])
    assert layers.effects.shape == (2,) and abs(float(layers.effects[0])) < 1e-5  # resid_pre of layer 0 is the same embedding
    assert patch_rows(heads)[0]["effect (nats)"] == pytest.approx(float(heads.effects.abs().max()) * (1 if float(heads.effects.flatten()[heads.effects.abs().argmax()]) > 0 else -1))
    fig = patch_figure(heads, marked=[[0, 1], [1, 0]])
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer" and fig.data[1].name == "intervened head"
    with pytest.raises(ConfigError, match="counterfactual"):
        patch(pair, PROMPT, "", ia, ic, "clean ← corrupt, tuned model", SITES[0])
    with pytest.raises(ConfigError, match="equal lengths"):
        patch(pair, PROMPT, "Hello", ia, ic, "corrupt ← clean, base model", SITES[0])
    assert len(DIRECTIONS) == 6


def test_export_reads_back(tiny):
    from safetensors.torch import load

    from app.views import export
    from app.views.figures import kl_figure, lens_window_figure
    from app.views.lens import lens_window, tracked_logits

    _, _, _, loaded, _, a = tiny
    tracked = tracked_logits(loaded.pair, a, torch.tensor([3, 4]))
    w = lens_window(loaded.pair, a, 2, 6)
    arrays = load(export.safetensors_bytes(a, tracked, w))
    assert torch.equal(arrays["base.resid_post"], a.resid_post["base"]) and torch.equal(arrays["kl"], a.kl)
    assert torch.equal(arrays["tuned.tracked_logits"], tracked["tuned"]) and arrays["base.lens_top_ids"].shape == (2, 4)
    rows = list(csv.DictReader(io.StringIO(export.csv_text(export.per_position_rows(a, tracked)))))
    assert len(rows) == a.n_pos and float(rows[-1]["kl_nats"]) == pytest.approx(float(a.kl[-1]), rel=1e-5)
    assert float(rows[-1]["base_logit_diff_nats"]) == pytest.approx(float(tracked["base"][-1, -1, 0] - tracked["base"][-1, -1, 1]), rel=1e-5)
    html = export.figures_html([kl_figure(a), lens_window_figure(a, w)])
    assert html.count("Plotly.newPlot") == 2 and html.count("plotly.js v") == 1  # plotly.js embedded once: opens offline


def _titles(at) -> str:
    """Every figure title and subplot title on the page, joined."""
    layouts = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
    return " ".join(t["text"] for lay in layouts for t in [lay.get("title", {}), *lay.get("annotations", [])] if "text" in t)


def test_page_counts_tracks_patches_and_shares_its_state(monkeypatch, tiny):
    """One AppTest session: the token count before submit, the counterfactual, the tracked tokens and the lens window
    in the URL, the figures titled with the tracked tokens, patching from the page, a bad token refused in the page; then
    a shared link reopens the same state."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from app.views.lens import LENS_WINDOW

    base, run, runs, *_ = tiny
    st.cache_resource.clear()
    monkeypatch.setenv("WORKBENCH_APP_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_APP_TUNED", str(run))
    monkeypatch.setenv("WORKBENCH_APP_RUNS", str(runs))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at.text_area(key="prompt").set_value(PROMPT)
    at.text_area(key="cf_prompt").set_value(CORRUPT).run()  # committed, not submitted: the counts update
    n = tiny[3].pair.tokenize([PROMPT])[0].shape[1]
    assert any(c.value == f"Prompt: {n} tokens · counterfactual: {n} tokens" for c in at.caption), [c.value for c in at.caption]
    assert "prompt" not in at.query_params and not at.success  # nothing analysed yet
    at.button(key="analyse").click().run()
    assert not at.exception and not at.error
    one = lambda v: v[0] if isinstance(v, list) else v
    assert one(at.query_params["cf"]) == CORRUPT and one(at.query_params["lens"]) == f"{max(0, n - LENS_WINDOW)}-{n - 1}"
    answer = at.text_input(key=f"answer-{hash(PROMPT)}").value
    contrast = at.text_input(key=f"contrast-{hash(PROMPT)}").value
    assert (one(at.query_params["answer"]), one(at.query_params["contrast"])) == (answer, contrast)
    assert f"logit({answer!r}) − logit({contrast!r})" in _titles(at)
    assert len(at.get("download_button")) == 3  # export: arrays (safetensors), per-position table (CSV), figures (HTML)
    at.slider(key=f"lens-{hash(PROMPT)}").set_value((2, 5)).run()
    assert one(at.query_params["lens"]) == "2-5" and "positions 2–5 of" in _titles(at)
    at.text_input(key=f"answer-{hash(PROMPT)}").set_value(" apple key coin").run()  # several tokens: refused in the page
    assert not at.exception and any("not one" in e.value for e in at.error)
    at.text_input(key=f"answer-{hash(PROMPT)}").set_value(contrast).run()
    assert not at.error and one(at.query_params["answer"]) == contrast
    at.radio(key="view").set_value("Patching").run()
    at.selectbox(key="patch_direction").set_value("clean ← corrupt, base model")
    at.selectbox(key="patch_sites").set_value("layers × positions (hook_resid_pre)").run()
    assert not at.get("plotly_chart") and any("Run patching" in i.value for i in at.info)
    at.button(key="patch_run").click().run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 1
    assert "per layer and position" in _titles(at)
    state = {k: one(at.query_params[k]) for k in ("prompt", "cf", "answer", "contrast", "lens", "view")}

    shared = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    shared.query_params.update({**state, "view": "Predictions & logit lens"})
    shared.run()
    assert not shared.exception and not shared.error
    assert shared.text_area(key="cf_prompt").value == CORRUPT and shared.text_area(key="prompt").value == PROMPT
    assert shared.text_input(key=f"answer-{hash(PROMPT)}").value == contrast
    assert shared.slider(key=f"lens-{hash(PROMPT)}").value == (2, 5)


def test_tuned_readout_runs_under_the_intervention(tiny):
    """A full fine-tuning intervention changes the final norm and the unembedding too: the tuned side's lens (window,
    one position, tracked tokens) reads them under the intervention, so its last layer is the tuned model's own output."""
    from app.views.analysis import analyse_prompt
    from app.views.lens import lens_at, lens_window, tracked_logits
    from workbench.methods import get_method
    from workbench.models import load_model
    from workbench.pair import ModelPair

    model, tok, info = load_model(tiny[0], device="cpu")
    spec = get_method("full")
    full = spec.intervention_cls(spec.config_cls(), info.to_dict())
    full.bind(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, d in full.deltas.items():
            d.add_(torch.randn(d.shape, generator=g) * (0.5 if "norm" in name or "lm_head" in name or "embed" in name else 0.05))
    pair = ModelPair(model, model, tok, info, info, tuned_intervention=full)
    a = analyse_prompt(pair, PROMPT, lens_positions=0)
    base_logits, tuned_logits = pair.logits(a.input_ids[None])
    assert float((tuned_logits - base_logits).abs().max()) > 0.1
    ids = torch.tensor([3, 4])
    tracked = tracked_logits(pair, a, ids)
    w = lens_window(pair, a, a.n_pos - 3, a.n_pos)
    at = lens_at(pair, a, -1, ids)
    for role, logits in (("base", base_logits[0].float()), ("tuned", tuned_logits[0].float())):
        torch.testing.assert_close(tracked[role][-1], logits[:, ids], atol=1e-4, rtol=1e-4)
        assert torch.equal(w.top_ids[role][-1], logits[-3:].argmax(-1))
        torch.testing.assert_close(at[role][-1], logits[-1].softmax(-1)[ids], atol=1e-5, rtol=1e-4)
