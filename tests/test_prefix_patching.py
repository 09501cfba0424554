"""Prefix-shared exact patching (probes/prefix_patching.py): the target's prefix is computed once and reused through
its key/value cache; results equal the full recomputation, and the variants really run on the suffix only."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from probes import metrics
from probes.patching import activation_patch, head_sites, path_patch, run_patched
from probes.prefix_patching import first_patched_position, suffix
from workbench.sites import Site

B, T = 3, 7


def _data(seed: int = 5, vocab: int = 64, b: int = B, t: int = T):
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(4, vocab, (b, t), generator=g), torch.randint(4, vocab, (b, t), generator=g)
    return clean, corrupt, metrics.logit_diff(torch.randint(4, vocab, (b,), generator=g), torch.randint(4, vocab, (b, 2), generator=g))


def _lengths_seen(model):
    """A forward pre-hook recording the sequence length of every call (to see the suffix-only variant runs)."""
    seen: list[int] = []
    handle = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    return seen, handle


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


@pytest.mark.parametrize("pos", [-1, 4, 0])
def test_head_sweep_equals_full_recomputation_and_runs_only_the_suffix(pos):
    model, info = make_tiny(0)
    clean, corrupt, metric = _data()
    sites = head_sites(info.dims, pos=pos)
    seen, handle = _lengths_seen(model)
    try:
        fast = activation_patch(model, sites, clean, corrupt, metric)
    finally:
        handle.remove()
    from probes import patching

    slow_logits, _ = run_patched(model, clean, [patching.PatchLayer(*_masks_source(model, sites, clean, corrupt, metric))],
                                 len(sites), share_prefix=False)
    slow = _effects(slow_logits, metric, model, clean)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    start = T - 1 if pos == -1 else pos
    if start:
        assert T - start in seen and start in seen, seen  # the prefix once, the variants on the suffix only
    else:
        assert set(seen) == {T}


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
    import probes.patching as patching

    model, _ = make_tiny(0)
    clean, corrupt, metric = _data(seed=2)
    senders = [Site(0, "attn.hook_z", head=h, pos=-1) for h in range(2)]
    shared = path_patch(model, senders, [Site(1, "attn.hook_q", pos=-1)], clean, corrupt, metric)
    monkeypatch.setattr(patching, "first_patched_position", lambda masks, seq: 0)  # sharing off everywhere
    full = path_patch(model, senders, [Site(1, "attn.hook_q", pos=-1)], clean, corrupt, metric)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    assert full.abs().max() > 1e-6


@pytest.fixture(scope="module")
def real_model():
    from workbench.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.mark.real
def test_real_model_last_position_head_sweep_equals_full_recomputation(real_model):
    model, tok, info = real_model
    rows = [tok.encode(t)[:8] for t in ("The capital of France is the city of", "The box contains the apple and the key is in")]
    clean = torch.tensor(rows)
    corrupt = clean.flip(0)
    metric = metrics.logit_diff(torch.tensor([tok.encode(" Paris")[0]] * 2), torch.tensor([[tok.encode(" London")[0]]] * 2))
    sites = head_sites(info.dims, pos=-1, layers=[0, 15, 29])
    fast = activation_patch(model, sites, clean, corrupt, metric)
    masks, source = _masks_source(model, sites, clean, corrupt, metric)
    from probes.patching import PatchLayer

    slow_logits, _ = run_patched(model, clean, [PatchLayer(masks, source)], len(sites), share_prefix=False)
    with torch.no_grad():
        base = metric(model(input_ids=clean).logits[:, -1].float())
    slow = torch.stack([metric(v) for v in slow_logits]) - base
    torch.testing.assert_close(fast, slow, atol=2e-4, rtol=1e-4)
