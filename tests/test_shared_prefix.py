"""Prefix-shared exact patching (probes/shared_prefix.py): the target's prefix is computed once and reused through
its key/value cache; results equal the full recomputation, and the variants really run on the suffix only."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from probes import metrics
from probes.patch_sites import head_sites, layer_pos_sites
from probes.patching import PatchLayer, activation_patch, run_patched
from probes.path_patching import path_patch
from probes.shared_prefix import (
    first_patched_layers,
    first_patched_position,
    layer_groups,
    suffix,
)
from workbench.sites import Site

B, T = 3, 7


def _data(seed: int = 5, vocab: int = 64, b: int = B, t: int = T):
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(4, vocab, (b, t), generator=g), torch.randint(4, vocab, (b, t), generator=g)
    return clean, corrupt, metrics.logit_diff(torch.randint(4, vocab, (b,), generator=g), torch.randint(4, vocab, (b, 2), generator=g))


def _calls(model):
    """Forward hooks on every decoder layer recording ``(layer, rows, positions)`` of each call that ran it."""
    from workbench.hooked import module_hooks

    seen: list[tuple[int, int, int]] = []

    def post(layer):
        def fn(_m, _args, out):
            seen.append((layer, out.shape[0], out.shape[1]))
        return fn

    return seen, module_hooks(post=[(m, post(i)) for i, m in enumerate(model.model.layers)])


def _work(seen, layer):
    """Token-rows a decoder layer processed (rows x positions, summed over calls)."""
    return sum(r * t for i, r, t in seen if i == layer)


def test_first_patched_position():
    m = torch.zeros(2, 1, 5, 3, dtype=torch.bool)
    assert first_patched_position([m], 5) == 4  # nothing patched: only the last position must run
    m[1, 0, 2, 1] = True
    assert first_patched_position([m], 5) == 2
    assert first_patched_position([m, torch.ones(1, 1, 1, 3, dtype=torch.bool)], 5) == 0  # broadcast over positions
    assert first_patched_position([torch.zeros(1, 1, 1, dtype=torch.bool)], 5) == 4
    t = torch.arange(10).reshape(1, 5, 2)
    assert suffix(t, 3, 1, 5).tolist() == [[[6, 7], [8, 9]]]
    assert suffix(t, 3, 2, 5) is t  # that axis does not span the sequence: broadcasts, unchanged


@pytest.mark.parametrize("pos", [-1, 4, 0, None])
def test_head_sweep_equals_full_recomputation_and_runs_only_the_suffix_and_upper_layers(pos):
    model, info = make_tiny(0)
    clean, corrupt, metric = _data()
    sites = head_sites(info.dims, pos=pos)  # 2 variants at layer 0, 2 at layer 1
    seen, scope = _calls(model)
    with scope:
        fast = activation_patch(model, sites, clean, corrupt, metric)
    slow_logits, _ = run_patched(model, clean, [PatchLayer(*_masks_source(model, sites, clean, corrupt, metric))],
                                 len(sites), share_prefix=False)
    slow = _effects(slow_logits, metric, model, clean)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert fast.abs().max() > 1e-4
    start = {-1: T - 1, 4: 4, 0: 0, None: 0}[pos]
    rest = T - start
    # each layer: the source run (B x T), the target's prefix (B x start), the target's suffix once (to record layer 1's
    # input; it also gives the unpatched baseline), the layer-0 group (2 variants); layer 1 also the layer-1 group,
    # which did not run layer 0
    assert _work(seen, 0) == B * T + B * start + B * rest + 2 * B * rest, seen
    assert _work(seen, 1) == B * T + B * start + B * rest + 2 * B * rest + 2 * B * rest, seen
    assert all(t == rest for i, r, t in seen if r == 2 * B)  # every variant ran on the suffix only


def test_first_patched_layers_and_groups():
    masks = {"blocks.3.attn.hook_z": torch.zeros(4, 1, 5, 2, dtype=torch.bool),
             "blocks.1.hook_resid_pre": torch.zeros(4, 1, 5, dtype=torch.bool)}
    masks["blocks.3.attn.hook_z"][0, 0, 2, 1] = True
    masks["blocks.1.hook_resid_pre"][2, 0, 4] = True
    first = first_patched_layers(masks, 4, 6)
    assert first.tolist() == [3, 5, 1, 5]  # nothing patched: the last layer only
    assert [(layer, m.tolist()) for layer, m in layer_groups(first)] == [(1, [2]), (3, [0]), (5, [1, 3])]
    broadcast = {"blocks.2.hook_resid_pre": torch.ones(1, 1, 5, dtype=torch.bool)}
    assert first_patched_layers([masks, broadcast], 4, 6).tolist() == [2, 2, 1, 2]


def _effects(logits, metric, model, clean):
    """Per-variant metric minus the unpatched target's (the metric is bound to one batch of prompts)."""
    with torch.no_grad():
        base = metric(model(input_ids=clean).logits[:, -1].float())
    return torch.stack([metric(v) for v in logits]) - base


def _masks_source(model, sites, clean, corrupt, metric):
    from probes.patching import _masks_and_source

    _, masks, source, _ = _masks_and_source(model, sites, clean, corrupt, None, None, metric)
    return masks, source


def test_mid_sequence_resid_patch_and_cross_model_source_equal_full_recomputation():
    model, _ = make_tiny(0)
    other, _ = make_tiny(1)
    clean, corrupt, metric = _data(seed=9)
    sites = [Site(layer, "hook_resid_pre", pos=p) for layer in range(2) for p in (3, 5)] + [Site(1, "mlp.hook_post", pos=4)]
    fast = activation_patch(model, sites, clean, corrupt, metric, source_model=other)
    masks, source = _masks_source_cross(model, other, sites, clean, corrupt, metric)
    from probes.patching import PatchLayer

    slow_logits, _ = run_patched(model, clean, [PatchLayer(masks, source)], len(sites), share_prefix=False)
    slow = _effects(slow_logits, metric, model, clean)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert fast.abs().max() > 1e-4  # the patches change something (a no-op would pass trivially)


def _masks_source_cross(model, other, sites, clean, corrupt, metric):
    from probes.patching import _masks_and_source

    _, masks, source, _ = _masks_and_source(model, sites, clean, corrupt, other, None, metric)
    return masks, source


def test_path_patching_unchanged_by_prefix_sharing(monkeypatch):
    """path_patch (recorded senders, patched receivers at the last position): equal with sharing on and off."""
    from probes import patching, path_patching

    model, _ = make_tiny(0)
    clean, corrupt, metric = _data(seed=2)
    senders = [Site(0, "attn.hook_z", head=h, pos=-1) for h in range(2)]
    shared = path_patch(model, senders, [Site(1, "attn.hook_q", pos=-1)], clean, corrupt, metric)
    monkeypatch.setattr(path_patching, "first_patched_position", lambda masks, seq: 0)  # sharing off everywhere
    monkeypatch.setattr(patching, "first_differing_position", lambda layers, seq: 0)
    full = path_patch(model, senders, [Site(1, "attn.hook_q", pos=-1)], clean, corrupt, metric)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    assert full.abs().max() > 1e-6


@pytest.fixture(scope="module")
def real_model(smollm2):
    return smollm2  # shared with the whole run (conftest.py): read only


@pytest.mark.real
@pytest.mark.parametrize("pos", [-1, None])
def test_real_model_head_sweep_equals_full_recomputation(real_model, pos):
    """SmolLM2: heads of layers 0, 15 and 29 at the last position (positions and layers shared) and at all positions
    (layers shared)."""
    model, tok, info = real_model
    rows = [tok.encode(t)[:8] for t in ("The capital of France is the city of", "The box contains the apple and the key is in")]
    clean = torch.tensor(rows)
    corrupt = clean.flip(0)
    metric = metrics.logit_diff(torch.tensor([tok.encode(" Paris")[0]] * 2), torch.tensor([[tok.encode(" London")[0]]] * 2))
    sites = head_sites(info.dims, pos=pos, layers=[0, 15, 29])
    fast = activation_patch(model, sites, clean, corrupt, metric)
    masks, source = _masks_source(model, sites, clean, corrupt, metric)
    from probes.patching import PatchLayer

    slow_logits, _ = run_patched(model, clean, [PatchLayer(masks, source)], len(sites), share_prefix=False)
    with torch.no_grad():
        base = metric(model(input_ids=clean).logits[:, -1].float())
    slow = torch.stack([metric(v) for v in slow_logits]) - base
    torch.testing.assert_close(fast, slow, atol=2e-4, rtol=1e-4)


def _slow_equal(model, sites, clean, corrupt, metric, fast, side=None, atol=1e-5):
    """``fast`` equals the full recomputation (``share_prefix=False``) of the same sweep."""
    slow = activation_patch(side or model, sites, clean, corrupt, metric, share_prefix=False)
    torch.testing.assert_close(fast, slow, atol=atol, rtol=1e-5)
    assert slow.abs().max() > 1e-4  # the patches change something (a no-op would pass trivially)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gemma3"])
def test_layer_and_position_sharing_equal_full_recomputation_across_architectures(kind):
    """4-layer tiny models (Qwen2 and Gemma 3 with sliding windows of 4 on 10-token prompts, Gemma 3's scaled
    embeddings and soft-capped logits): heads at all positions, at the last position, and (layer, position) sweeps of
    the residual stream, with sharing on, equal the full recomputation; layer sharing really runs (layer 0 sees only
    the variants that patch it)."""
    from test_kernels_forward_from_layer import _tiny

    from workbench_kernels.forward_from_layer import supports
    from workbench.architecture import Dims

    model = _tiny(kind)
    assert supports(model)
    dims = Dims.of(model)
    clean, corrupt, metric = _data(seed=11, b=2, t=10)
    for sites in (head_sites(dims), head_sites(dims, pos=-1), layer_pos_sites(dims, 10)[::3]):
        seen, scope = _calls(model)
        with scope:
            fast = activation_patch(model, sites, clean, corrupt, metric)
        _slow_equal(model, sites, clean, corrupt, metric, fast)
        at_layer0 = sum(1 for s in sites if s.layer == 0)
        assert max(r for i, r, t in seen if i == 0) <= max(at_layer0, 1) * 2, (seen, at_layer0)


def test_hooks_of_the_side_context_fire_on_the_layers_that_run():
    """A tuned Side whose context hooks the layer below the patched one, the input of the patched layer (where the
    variants start: applied once, not twice) and its output: equal to the full recomputation."""
    from contextlib import contextmanager

    from probes.patch_sites import Side
    from workbench.hooked import hooks

    model, info = make_tiny(0)
    fired: list[int] = []

    @contextmanager
    def tuned():
        def scale(layer, k):
            def fn(x):
                fired.append(layer)
                return k * x
            return fn
        with hooks(model, [(Site(0, "mlp.hook_post"), scale(0, 1.5)), (Site(1, "hook_resid_pre"), scale(1, 1.3)),
                           (Site(1, "hook_resid_post"), scale(1, 0.7))]):
            yield

    side = Side(model, tuned)
    clean, corrupt, metric = _data(seed=4)
    sites = head_sites(info.dims, pos=None, layers=[1])  # the variants run layer 1 only
    fast = activation_patch(side, sites, clean, corrupt, metric)
    assert 1 in fired
    _slow_equal(model, sites, clean, corrupt, metric, fast, side=side)
    plain = activation_patch(model, sites, clean, corrupt, metric)
    assert (plain - fast).abs().max() > 1e-4  # the context's hooks were applied (in the target and in the variants)


def test_unsupported_models_run_every_layer_with_the_same_results(monkeypatch, caplog):
    """Where the prefix runner does not support a model (here: an unknown model type), every variant runs all layers;
    which path ran is recorded and its reason logged once."""
    import logging

    from probes import shared_prefix
    from workbench_kernels.paths import path_taken

    model, info = make_tiny(0)
    clean, corrupt, metric = _data(seed=6)
    sites = head_sites(info.dims, pos=-1)
    shared = activation_patch(model, sites, clean, corrupt, metric)
    monkeypatch.setattr(model.config, "model_type", "not-a-supported-family")
    assert not shared_prefix.shares_layers(model)
    seen, scope = _calls(model)
    with scope:
        fallback = activation_patch(model, sites, clean, corrupt, metric)
    torch.testing.assert_close(fallback, shared, atol=1e-5, rtol=1e-5)
    assert (0, 4 * B, 1) in seen  # all four variants through layer 0, on the last position only (positions still shared)
    assert path_taken("shared_prefix") == "positions only"
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="workbench_kernels"):
        activation_patch(model, sites, clean, corrupt, metric)
    assert path_taken("shared_prefix") == "layers and positions"


def test_bridged_model_is_not_prefix_shared_and_equals_full_recomputation():
    """A model with TransformerLens bridge components booted into it (the app boots them for its views) takes a
    ``cache`` argument, but its bridged attention ignores the cached prefix: sharing would give non-zero effects
    for a no-op patch. It must run whole (regression: found through the app's patching view)."""
    from conftest import tiny_llama_with_smollm2_tokenizer

    from probes.shared_prefix import bridged, takes_cache
    from workbench.architecture import Dims
    from workbench.hooked import to_bridge

    model, tok = tiny_llama_with_smollm2_tokenizer()
    assert takes_cache(model) and not bridged(model)
    to_bridge(model, tok, "tiny")
    assert bridged(model) and not takes_cache(model)
    clean, corrupt, metric = _data(vocab=len(tok))
    sites = head_sites(Dims.of(model), pos=-1)
    noop = activation_patch(model, sites, clean, clean, metric)
    assert noop.abs().max() < 1e-6  # identical activations patched in: no effect (was ~1e-2 with sharing)
    torch.testing.assert_close(activation_patch(model, sites, clean, corrupt, metric),
                               activation_patch(model, sites, clean, corrupt, metric, share_prefix=False), atol=1e-5, rtol=0)


def test_common_prefix_patch_equals_full_recomputation_and_variants_run_the_suffix_only():
    """Faithfulness-style mean ablation: every variant ablates every head at positions < 4 (the same patch), and keeps a
    different head at positions 4..: the prefix runs once with that common patch, the variants from position 4."""
    from probes.circuits import faithfulness
    from probes.patching import mean_activations
    from probes.shared_prefix import common_prefix_patch, first_differing_position

    model, info = make_tiny(0)
    clean, _, metric = _data()
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(2)]
    means = mean_activations(model, _data(seed=9)[0], names)
    keep = torch.zeros(3, 1, T, 2, dtype=torch.bool)  # variant v keeps head (v % 2) from position 4 on
    for v in range(3):
        keep[v, 0, 4:, v % 2] = True
    layers = [PatchLayer({n: ~keep for n in names}, {n: means[n] for n in names})]
    assert first_differing_position(layers, T) == 4
    assert [m.shape for m, _ in common_prefix_patch(layers, 4, T)[names[0]]] == [(1, 1, 4, 2)]
    assert first_differing_position([PatchLayer({names[0]: ~keep}, {names[0]: means[names[0]][None]}, per_variant=True)], T) == 0
    seen, scope = _calls(model)
    with scope:
        fast, _ = run_patched(model, clean, layers, 3)
    slow, _ = run_patched(model, clean, layers, 3, share_prefix=False)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert (fast[0] - fast[1]).abs().max() > 1e-4  # the variants differ
    assert all(t == T - 4 for _, r, t in seen if r == 3 * B) and any(r == B and t == 4 for _, r, t in seen)
    # faithfulness itself (circuit heads at the last position; random circuits at the same positions) agrees too
    circuit = [Site(1, "attn.hook_z", head=0, pos=-1), Site(0, "attn.hook_z", head=1, pos=-1)]
    a = faithfulness(model, circuit, clean, metric, means, n_random=3)
    b = faithfulness(model, circuit, clean, metric, means, n_random=3, share_prefix=False)
    assert a.circuit_score == pytest.approx(b.circuit_score, abs=1e-5)
    assert a.random_scores == pytest.approx(b.random_scores, abs=1e-5)
