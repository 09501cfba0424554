"""Exact edge patching against a hand-written intervention, the two ends of a circuit (keep every edge: the clean
metric; keep none: the corrupt one), faithfulness curves with random edge sets, base vs tuned on a ModelPair, and the
figures — on the tiny random Llama."""

from __future__ import annotations

import json
from contextlib import contextmanager

import plotly.graph_objects as go
import pytest
import torch
from conftest import make_tiny, tiny_info
from test_edges_eap import B, T, hand_forward

from probes import metrics
from probes.edges import (
    Graph,
    compare_pair,
    comparison_figures,
    eap,
    eap_ig,
    edge_patch_effect,
    edge_patch_effects,
    faithfulness_curve,
    patch_edges,
    score_correlation,
)
from probes.edges.faithfulness import default_sizes, keep_masks
from probes.patch_sites import Side
from workbench.errors import ConfigError
from workbench.hooked import module_hooks
from workbench.pair import ModelPair
from workbench.plots.edges import edge_heatmap, faithfulness_curves


@pytest.fixture(scope="module")
def data():
    model, _ = make_tiny(1, hidden_size=64)
    model.double()
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(4, 64, (B, T), generator=g)
    corrupt = torch.randint(4, 64, (B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    return model, clean, corrupt, metric


def _metric_of(model, ids, metric):
    with torch.no_grad():
        return metric(model(input_ids=ids).logits[:, -1])


# ----------------------------------------------------------------------------- exact edge patching
SETS = {
    "embed->logits": {"logits": ["embed"]},
    "a0.h1->m0": {"m0": ["a0.h1"]},
    "m0->a1": {"a1": ["m0"]},
    "a1.h0->m1": {"m1": ["a1.h0"]},
    # a chain: the second and third edges' senders run on the first edge's patched input (their *current* outputs)
    "embed->a0, a0.h1->m1, m0->logits, a0.h1->logits": {"a0": ["embed"], "m1": ["a0.h1"], "logits": ["m0", "a0.h1"]},
}


def _hand_patched(model, clean, corrupt, metric, patch):
    emb = model.get_input_embeddings()
    with torch.no_grad():
        _, s_corrupt, _ = hand_forward(model, emb(corrupt))
        logits, _, _ = hand_forward(model, emb(clean), patch=patch, corrupt=s_corrupt)
    return metric(logits)


@pytest.mark.parametrize("name", list(SETS))
def test_edge_patching_equals_a_hand_written_intervention(data, name):
    model, clean, corrupt, metric = data
    edges = [e.strip() for e in name.split(",")]
    ref = _hand_patched(model, clean, corrupt, metric, SETS[name])
    got = patch_edges(model, [edges], clean, corrupt, metric)[0]
    torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-7)
    assert (ref - _metric_of(model, clean, metric)).abs().max() > 1e-4  # the patch does something
    if len(edges) == 1:
        eff = edge_patch_effects(model, edges, clean, corrupt, metric)[0]
        torch.testing.assert_close(eff, ref - _metric_of(model, clean, metric), atol=1e-9, rtol=1e-7)
        assert edge_patch_effect(model, edges[0], clean, corrupt, metric) == pytest.approx(float(eff.mean()))


def test_variants_in_chunks_and_from_the_first_patched_layer_equal_full_runs(data):
    """Chunks of variants, and variants started from the clean residual stream at their lowest patched layer (layers
    below skipped), give what every variant's full forward gives."""
    from probes.edges.patching import run_variants
    from probes.edges.run import input_embeddings, sender_run

    model, clean, corrupt, metric = data
    g = Graph.of(model)
    sets = [[e] for e in g.edges()] + [g.edges()[::2], []]
    together = patch_edges(model, sets, clean, corrupt, metric, max_batch=64)
    chunked = patch_edges(model, sets, clean, corrupt, metric, max_batch=1)
    torch.testing.assert_close(chunked, together, atol=1e-10, rtol=1e-9)
    runs = [sender_run(model, g, input_embeddings(model, ids)) for ids in (corrupt, clean)]
    full = run_variants(model, g, clean, runs[0], g.check_sets(sets), metric, max_batch=64)  # no clean run: no skipping
    torch.testing.assert_close(together, full, atol=1e-10, rtol=1e-9)
    calls = []
    with module_hooks(pre=[(model.model.layers[0], lambda mod, args: calls.append(1))]):
        run_variants(model, g, clean, runs[0], g.check_sets([["m1->logits"], ["a1.h0->m1"]]), metric, 64, runs[1])
    assert not calls  # layer 0 did not run


@pytest.mark.parametrize("receivers", ["layer", "head"])
def test_keeping_every_edge_is_clean_and_none_is_corrupt(data, receivers):
    model, clean, corrupt, metric = data
    g = Graph.of(model, receivers)
    vals = patch_edges(model, [[], g.adjacency, g.edges()], clean, corrupt, metric, receivers=receivers)
    torch.testing.assert_close(vals[0], _metric_of(model, clean, metric), atol=1e-12, rtol=0)  # exactly clean
    torch.testing.assert_close(vals[1], _metric_of(model, corrupt, metric), atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(vals[2], vals[1], atol=1e-12, rtol=0)  # names and mask: the same set


def test_per_head_edges_into_every_qkv_input_equal_the_layer_edge(data):
    model, clean, corrupt, metric = data
    heads = Graph.of(model, "head")
    qkv = [f"a0.h1->{r}" for r in heads.receivers if r.startswith("a1.")]
    assert len(qkv) == 4  # two query heads, one key and one value head
    whole = patch_edges(model, [["a0.h1->a1"]], clean, corrupt, metric)[0]
    split = patch_edges(model, [qkv, qkv[:1]], clean, corrupt, metric, receivers="head")
    torch.testing.assert_close(split[0], whole, atol=1e-9, rtol=1e-7)
    assert (split[1] - whole).abs().max() > 1e-6  # one query input alone is another intervention


def test_eap_correlates_with_exact_patching_on_every_edge(data):
    """Not an equality (EAP is first order), a sanity check that the estimates track the effects on the tiny model."""
    model, clean, corrupt, metric = data
    for receivers in ("layer", "head"):
        scores = eap_ig(model, clean, corrupt, metric, steps=5, receivers=receivers)
        edges = scores.graph.edges()
        exact = edge_patch_effects(model, edges, clean, corrupt, metric, receivers=receivers).mean(1)
        corr = score_correlation([scores.score(e) for e in edges], exact)
        assert corr["pearson"] > 0.5 and corr["n"] == len(edges), corr
    with pytest.raises(ConfigError):
        score_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- faithfulness curves
def test_faithfulness_curve_ends_and_random_sets(data):
    model, clean, corrupt, metric = data
    scores = eap_ig(model, clean, corrupt, metric, steps=3)
    total = scores.graph.n_edges
    curve = faithfulness_curve(model, scores, clean, corrupt, metric, n_edges=[0, 2, 5, total], n_random=3, seed=4)
    assert curve.n_edges == [0, 2, 5, total] and curve.n_total_edges == total
    assert curve.recovered[0] == pytest.approx(0.0, abs=1e-9) and curve.recovered[-1] == pytest.approx(1.0, abs=1e-9)
    assert curve.clean_metric == pytest.approx(float(_metric_of(model, clean, metric).mean()))
    assert curve.corrupt_metric == pytest.approx(float(_metric_of(model, corrupt, metric).mean()))
    assert len(curve.random) == 3 and all(len(r) == 4 for r in curve.random)
    assert [r[-1] for r in curve.random] == pytest.approx([1.0] * 3, abs=1e-9)  # every edge kept, whatever the draw
    col = [r[1] for r in curve.random]
    mean = sum(col) / 3
    assert curve.random_mean[1] == pytest.approx(mean)
    assert curve.random_std[1] == pytest.approx((sum((v - mean) ** 2 for v in col) / 3) ** 0.5)
    # the top-2 circuit is what patch_edges gives when every other edge is patched
    keep = scores.graph.edge_mask(scores.top(2))
    by_hand = patch_edges(model, [scores.graph.adjacency & ~keep], clean, corrupt, metric)[0].mean()
    assert curve.metric[1] == pytest.approx(float(by_hand))
    json.dumps(curve.to_dict())


def test_keep_masks_are_the_top_edges_and_size_matched_random_sets(data):
    model, clean, corrupt, metric = data
    scores = eap(model, clean, corrupt, metric)
    top, rand = keep_masks(scores, [0, 3, 7], n_random=2, seed=0)
    assert top.sum((1, 2)).tolist() == [0, 3, 7] and rand.sum((2, 3)).tolist() == [[0, 3, 7]] * 2
    assert scores.graph.edge_names(top[1]) == sorted(scores.top(3), key=scores.graph.edges().index)
    assert not (rand & ~scores.graph.adjacency).any()
    assert not torch.equal(rand[0], rand[1])
    assert default_sizes(21) == [0, 1, 2, 5, 10, 20, 21] and default_sizes(1) == [0, 1]


# ----------------------------------------------------------------------------- base vs tuned
class _ScaleMLP:
    """A stand-in tuned intervention: scales layer 0's MLP down-projection while attached."""

    @contextmanager
    def attach(self, model):
        with module_hooks(post=[(model.model.layers[0].mlp.down_proj, lambda mod, args, out: out * 2.5)]):
            yield


def test_compare_pair_runs_the_tuned_side_in_its_context(data):
    model, clean, corrupt, metric = data
    info = tiny_info(model, "tiny-1")
    pair = ModelPair(model, model, None, info, info, tuned_intervention=_ScaleMLP())
    cmp = compare_pair(pair, clean, corrupt, metric, steps=2, top_n=5)
    base = eap_ig(model, clean, corrupt, metric, steps=2)
    tuned = eap_ig(Side.of(pair, "tuned"), clean, corrupt, metric, steps=2)
    assert torch.equal(cmp.base.scores, base.scores) and torch.equal(cmp.tuned.scores, tuned.scores)
    assert (cmp.delta.abs() > 1e-4).any()  # the intervention changed the scores
    with pair.tuned_context():
        assert cmp.tuned.clean_metric == pytest.approx(float(_metric_of(model, clean, metric).mean()))
    b, t = set(base.top(5)), set(tuned.top(5))
    assert set(cmp.gained) == t - b and set(cmp.lost) == b - t and set(cmp.shared) == b & t
    change = cmp.largest_changes(3)
    assert change[0]["delta"] == pytest.approx(change[0]["tuned"] - change[0]["base"])
    assert abs(change[0]["delta"]) == pytest.approx(float(cmp.delta.abs().max()))
    json.dumps(cmp.to_dict())
    curves = {role: faithfulness_curve(Side.of(pair, role), s, clean, corrupt, metric, n_edges=[0, 5, 21], n_random=2)
              for role, s in (("base", cmp.base), ("tuned", cmp.tuned))}
    figs = comparison_figures(cmp, curves)
    assert set(figs) == {"delta_heatmap", "faithfulness"} and all(isinstance(f, go.Figure) for f in figs.values())
    with pytest.raises(ConfigError, match="ModelPair"):
        compare_pair(model, clean, corrupt, metric)


def test_edge_figures():
    fig = edge_heatmap([[1.0, -2.0], [0.5, 3.0]], ["embed", "a0.h0"], ["a0", "logits"], "t", "Δ nats",
                       mask=[[True, False], [True, True]])
    heat = fig.data[0]
    assert heat.z[0][1] is None and heat.z[1][1] == 3.0 and heat.zmid == 0 and heat.zmax == 3.0
    assert fig.layout.yaxis.title.text.startswith("receiver")
    curves = {"base": {"n_edges": [0, 1, 10], "recovered": [0.0, 0.4, 1.0], "random_mean": [0.0, 0.1, 1.0],
                       "random_std": [0.0, 0.05, 0.0]}}
    fig = faithfulness_curves(curves, "f")
    assert len(fig.data) == 2 and list(fig.data[0].x) == [1, 10]  # n = 0 left out of the log axis
    assert len(faithfulness_curves(curves, "f", log_x=False).data[0].x) == 3
