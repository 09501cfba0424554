"""Edge attribution patching on the tiny random Llama: the graph, EAP and EAP-IG against gradient × difference written
by hand (a plain-torch forward of the same weights, no hooks, autograd at zero leaves added to each receiver's input),
the sum-over-senders identities, and bad input refused before any forward pass.

The hand-written forward (:func:`hand_forward`) is shared with tests/test_edges_faithfulness.py (exact edge patching).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny

from probes import metrics
from probes.edges import Graph, eap, eap_ig, edge_patch_effects, patch_edges
from probes.edges.faithfulness import faithfulness_curve
from workbench.errors import ConfigError

B, T = 3, 7


@pytest.fixture(scope="module")
def data():
    model, _ = make_tiny(1, hidden_size=64)
    model.double()  # the hand-written forward is compared at fp64 precision
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(4, 64, (B, T), generator=g)
    corrupt = torch.randint(4, 64, (B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    return model, clean, corrupt, metric


# ----------------------------------------------------------------------------- the reference, by hand
def _rms(norm, x):
    h = x.float()  # as transformers' LlamaRMSNorm: the statistics in fp32, whatever the model's dtype
    return norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)).to(x.dtype)


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None] + rotated * sin[:, None]


def hand_forward(model, embeds, *, leaves=None, patch=None, corrupt=None):
    """The tiny Llama by hand. Returns ``(final logits [batch, d_vocab], senders {name: [batch, pos, d_model]},
    receiver inputs {name: [batch, pos, d_model]})``.

    ``leaves``: ``{receiver: zero tensor}`` added to that receiver's input (its gradient is ∂metric/∂x_v). ``patch``:
    ``{receiver: [sender, ...]}`` — the receiver reads ``x_v − Σ (z_u^current − corrupt[u])`` (exact edge patching).
    """
    m, cfg = model.model, model.config
    b, t, _ = embeds.shape
    n_h, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = cfg.hidden_size // n_h
    cos, sin = m.rotary_emb(embeds, torch.arange(t)[None].expand(b, t))
    causal = torch.full((t, t), float("-inf"), dtype=embeds.dtype).triu(1)
    senders, inputs = {"embed": embeds}, {}

    def receive(name, resid):
        x = resid
        for u in (patch or {}).get(name, []):
            x = x - (senders[u] - corrupt[u])
        if leaves is not None:
            x = x + leaves[name]
        inputs[name] = x
        return x

    resid = embeds
    for layer, block in enumerate(m.layers):
        a = block.self_attn
        h = _rms(block.input_layernorm, receive(f"a{layer}", resid))
        q = (h @ a.q_proj.weight.T).view(b, t, n_h, dh).transpose(1, 2)
        k = (h @ a.k_proj.weight.T).view(b, t, n_kv, dh).transpose(1, 2)
        v = (h @ a.v_proj.weight.T).view(b, t, n_kv, dh).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k, v = k.repeat_interleave(n_h // n_kv, 1), v.repeat_interleave(n_h // n_kv, 1)
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(dh) + causal).softmax(-1, dtype=torch.float32).to(q.dtype)  # as eager
        z = att @ v  # [batch, head, pos, d_head]
        for hd in range(n_h):
            senders[f"a{layer}.h{hd}"] = z[:, hd] @ a.o_proj.weight[:, hd * dh:(hd + 1) * dh].T
            resid = resid + senders[f"a{layer}.h{hd}"]
        hm = _rms(block.post_attention_layernorm, receive(f"m{layer}", resid))
        senders[f"m{layer}"] = block.mlp.down_proj(F.silu(block.mlp.gate_proj(hm)) * block.mlp.up_proj(hm))
        resid = resid + senders[f"m{layer}"]
    logits = model.lm_head(_rms(m.norm, receive("logits", resid)))[:, -1]
    return logits, senders, inputs


def hand_scores(model, clean, corrupt, metric, alphas=(1.0,)):
    """EAP / EAP-IG by hand: ``{(sender, receiver): score}`` over every edge, the receiver gradients averaged over the
    interpolation points ``alphas`` (1.0 = the clean embeddings)."""
    graph = Graph.of(model)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        e_clean, e_corrupt = emb(clean), emb(corrupt)
        _, s_corrupt, _ = hand_forward(model, e_corrupt)
        _, s_clean, _ = hand_forward(model, e_clean)
    grads = {r: 0.0 for r in graph.receivers}
    for alpha in alphas:
        leaves = {r: torch.zeros(B, T, model.config.hidden_size, dtype=torch.float64, requires_grad=True) for r in graph.receivers}
        e = e_clean if alpha == 1.0 else e_corrupt + alpha * (e_clean - e_corrupt)
        logits, _, _ = hand_forward(model, e.detach(), leaves=leaves)
        metric(logits).sum().backward()
        for r in graph.receivers:
            grads[r] = grads[r] + leaves[r].grad / len(alphas)
    return {(u, v): float(((s_corrupt[u] - s_clean[u]) * grads[v]).sum() / B)
            for v, n in zip(graph.receivers, graph.n_upstream) for u in graph.senders[:n]}, grads, s_clean, s_corrupt


# ----------------------------------------------------------------------------- the graph
def test_graph_nodes_and_edges_follow_the_layer_order():
    model, _ = make_tiny(0)
    g = Graph.of(model)
    assert g.senders == ("embed", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1")
    assert g.receivers == ("a0", "m0", "a1", "m1", "logits")
    assert g.n_edges == 1 + 3 + 4 + 6 + 7 == len(g.edges())
    for ok in ("embed->logits", "embed->a0", "a0.h1->m0", "m0->a1", "a1.h0->m1", "m1->logits"):
        assert g.edge_mask([ok]).sum() == 1
    for bad in ("m0->m0", "a1.h0->a1", "m1->a1", "a0.h0->a0"):
        with pytest.raises(ConfigError, match="does not exist"):
            g.edge_index(bad)
    assert g.edge_names(g.adjacency) == g.edges()
    h = Graph.of(model, "head")  # 2 query heads, 1 key / value head per layer
    assert h.receivers[:5] == ("a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h0<v>", "m0")
    assert h.n_edges == 4 * 1 + 3 + 4 * 4 + 6 + 7


def test_hand_forward_is_the_model(data):
    model, clean, _, _ = data
    with torch.no_grad():
        ref = model(input_ids=clean).logits[:, -1]
        logits, senders, inputs = hand_forward(model, model.get_input_embeddings()(clean))
    torch.testing.assert_close(logits, ref, atol=1e-12, rtol=1e-12)
    # the residual stream is the sum of the sender outputs (the decomposition the graph assumes)
    torch.testing.assert_close(inputs["logits"], sum(senders.values()), atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- EAP and EAP-IG by hand
def test_eap_equals_gradient_times_difference_by_hand(data):
    model, clean, corrupt, metric = data
    ref, _, _, _ = hand_scores(model, clean, corrupt, metric)
    got = eap(model, clean, corrupt, metric)
    g = got.graph
    for (u, v), s in ref.items():
        assert got.score(f"{u}->{v}") == pytest.approx(s, abs=1e-9, rel=1e-7), (u, v)
    assert got.scores[~g.adjacency].abs().max() == 0  # nothing off the graph
    assert max(abs(s) for s in ref.values()) > 1e-3  # a real signal, not zeros on both sides
    with torch.no_grad():
        cl = metric(model(input_ids=clean).logits[:, -1]).mean()
        co = metric(model(input_ids=corrupt).logits[:, -1]).mean()
    assert got.clean_metric == pytest.approx(float(cl)) and got.corrupt_metric == pytest.approx(float(co))


def test_eap_ig_equals_averaged_gradients_by_hand(data):
    model, clean, corrupt, metric = data
    steps = 4
    ref, _, _, _ = hand_scores(model, clean, corrupt, metric, alphas=[k / steps for k in range(1, steps + 1)])
    got = eap_ig(model, clean, corrupt, metric, steps=steps)
    for (u, v), s in ref.items():
        assert got.score(f"{u}->{v}") == pytest.approx(s, abs=1e-9, rel=1e-7), (u, v)
    assert not torch.allclose(got.scores, eap(model, clean, corrupt, metric).scores)  # the steps matter


def test_eap_ig_with_one_step_is_eap_exactly(data):
    model, clean, corrupt, metric = data
    for receivers in ("layer", "head"):
        a = eap(model, clean, corrupt, metric, receivers=receivers)
        b = eap_ig(model, clean, corrupt, metric, steps=1, receivers=receivers)
        assert torch.equal(a.scores, b.scores) and a.method == "eap"


def test_prompt_chunks_give_the_same_scores(data):
    model, clean, corrupt, metric = data
    whole = eap_ig(model, clean, corrupt, metric, steps=2)
    chunked = eap_ig(model, clean, corrupt, metric, steps=2, max_batch=2)
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-12, rtol=1e-9)
    assert chunked.clean_metric == pytest.approx(whole.clean_metric)


# ----------------------------------------------------------------------------- identities
def test_sum_over_senders_is_the_receiver_input_attribution(data):
    """Σ_u score(u→v) = (x_v^corrupt − x_v^clean) · ∂metric/∂x_v: the receiver input is the sum of its senders."""
    model, clean, corrupt, metric = data
    _, grads, _, _ = hand_scores(model, clean, corrupt, metric)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        _, _, x_clean = hand_forward(model, emb(clean))
        _, _, x_corrupt = hand_forward(model, emb(corrupt))
    got = eap(model, clean, corrupt, metric)
    for r, v in enumerate(got.graph.receivers):
        node = float(((x_corrupt[v] - x_clean[v]) * grads[v]).sum() / B)
        assert float(got.scores[:, r].sum()) == pytest.approx(node, abs=1e-9, rel=1e-7), v


def test_per_head_receivers_sum_to_the_layer_receiver(data):
    """The q / k / v inputs of every head read the same residual stream: their scores sum to the layer's."""
    model, clean, corrupt, metric = data
    layer = eap_ig(model, clean, corrupt, metric, steps=2)
    head = eap_ig(model, clean, corrupt, metric, steps=2, receivers="head")
    lg, hg = layer.graph, head.graph
    for r, rec in enumerate(hg.receiver_nodes):
        if rec.kind in ("mlp", "logits"):
            torch.testing.assert_close(head.scores[:, r], layer.scores[:, lg.receivers.index(rec.name)], atol=1e-9, rtol=1e-6)
    for li in range(lg.n_layers):
        cols = [r for r, rec in enumerate(hg.receiver_nodes) if rec.layer == li and rec.kind in "qkv"]
        torch.testing.assert_close(head.scores[:, cols].sum(1), layer.scores[:, lg.receivers.index(f"a{li}")],
                                   atol=1e-9, rtol=1e-6)
        assert head.scores[:, cols].abs().max() > 1e-4


# ----------------------------------------------------------------------------- architectures
def test_other_llama_like_families_decompose_and_gemma3_is_refused():
    from test_kernels_forward_from_layer import _tiny

    g = torch.Generator().manual_seed(5)
    clean, corrupt = torch.randint(4, 64, (2, 6), generator=g), torch.randint(4, 64, (2, 6), generator=g)
    metric = metrics.logit_diff(torch.tensor([5, 6]), torch.tensor([[7], [8]]))
    for kind in ("qwen2", "mistral"):  # qwen2: q / k / v biases (per-head slices keep theirs)
        model = _tiny(kind)
        for receivers in ("layer", "head"):
            g_ = Graph.of(model, receivers)
            vals = patch_edges(model, [[], g_.adjacency], clean, corrupt, metric, receivers=receivers)
            with torch.no_grad():
                ref = torch.stack([metric(model(input_ids=i).logits[:, -1]) for i in (clean, corrupt)])
            torch.testing.assert_close(vals, ref, atol=2e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="norm"):
        eap(_tiny("gemma3"), clean, corrupt, metric)


def test_a_residual_stream_that_is_not_the_sum_of_senders_is_refused(data):
    """An architecture that passes the structural check but scales its residual (simulated: a hook doubling each MLP
    output after the graph reads it) fails the decomposition check of the corrupt run."""
    model, _ = make_tiny(0)
    from workbench.hooked import module_hooks

    clean = torch.randint(4, 64, (2, 5))
    metric = metrics.logit_diff(torch.tensor([5, 6]), torch.tensor([[7], [8]]))
    scale = [(model.model.layers[0], lambda mod, args, out: out * 1.5)]
    with module_hooks(post=scale), pytest.raises(ConfigError, match="sum of the graph's sender outputs"):
        eap(model, clean, clean.flip(0), metric)


# ----------------------------------------------------------------------------- bad input, before any forward pass
@pytest.fixture
def no_forward(monkeypatch):
    model, _ = make_tiny(0)

    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran for invalid input")

    monkeypatch.setattr(model, "forward", refuse)
    return model


BAD = {
    "steps 0": lambda m, c, x, f: eap_ig(m, c, x, f, steps=0),
    "steps bool": lambda m, c, x, f: eap_ig(m, c, x, f, steps=True),
    "steps float": lambda m, c, x, f: eap_ig(m, c, x, f, steps=2.0),
    "unequal lengths": lambda m, c, x, f: eap(m, c, x[:, :-1], f),
    "unequal batch": lambda m, c, x, f: eap_ig(m, c, x[:1], f),
    "unknown receivers": lambda m, c, x, f: eap(m, c, x, f, receivers="qkv"),
    "metric not callable": lambda m, c, x, f: eap(m, c, x, "logit_diff"),
    "unknown sender": lambda m, c, x, f: edge_patch_effects(m, ["a9.h0->logits"], c, x, f),
    "unknown receiver": lambda m, c, x, f: edge_patch_effects(m, ["embed->a0.h0<q>"], c, x, f),
    "not an edge name": lambda m, c, x, f: patch_edges(m, [["embed", "logits"]], c, x, f),
    "edge backwards": lambda m, c, x, f: patch_edges(m, [["m1->a1"]], c, x, f),
    "one string": lambda m, c, x, f: edge_patch_effects(m, "embed->logits", c, x, f),
    "no edge sets": lambda m, c, x, f: patch_edges(m, [], c, x, f),
    "mask shape": lambda m, c, x, f: patch_edges(m, [torch.ones(3, 3, dtype=torch.bool)], c, x, f),
    "max_batch 0": lambda m, c, x, f: patch_edges(m, [["embed->logits"]], c, x, f, max_batch=0),
    "token out of vocab": lambda m, c, x, f: eap(m, c + 1000, x, f),
    "faithfulness sizes": lambda m, c, x, f: faithfulness_curve(m, _fake_scores(m), c, x, f, n_edges=[0, 10 ** 6]),
    "faithfulness scores": lambda m, c, x, f: faithfulness_curve(m, {"embed->logits": 1.0}, c, x, f),
}


def _fake_scores(model):
    from probes.edges.eap import EdgeScores

    g = Graph.of(model)
    return EdgeScores(g, torch.zeros(g.adjacency.shape), "eap", 1, 0.0, 0.0, 1)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_before_any_forward(no_forward, case):
    clean = torch.randint(4, 64, (2, 5))
    metric = metrics.logit_diff(torch.tensor([5, 6]), torch.tensor([[7], [8]]))
    with pytest.raises(ConfigError):
        BAD[case](no_forward, clean, clean.flip(0), metric)
