"""Patching through nnsight (issue 14): ``backend="nnsight"`` (or an nnsight model) gives the hook path's results.

Only local traces are tested; the ``remote=True`` route to NDIF needs network access and an API key (none here)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama_with_smollm2_tokenizer
from probes import metrics as pm
from probes.patch_sites import Side, head_sites, layer_pos_sites
from probes.patching import activation_patch, attribution_patch
from probes.patching_remote import activation_patch_nnsight, cache_nnsight, is_nnsight
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.hooked import hook_count, to_nnsight
from workbench.sites import Site

ATOL = 1e-5


def _variants(dims: Dims, seq: int) -> dict[str, list]:
    return {
        "heads": head_sites(dims, pos=-1),
        "resid": layer_pos_sites(dims, seq),
        "mixed": [Site(0, "mlp.hook_post"), [Site(1, "hook_resid_post", pos=2), Site(0, "attn.hook_q", head=1)],
                  Site(1, "hook_attn_out"), Site(0, "attn.hook_v", head=0), Site(1, "hook_mlp_out", pos=-1)],
    }


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama_with_smollm2_tokenizer()
    return model, tok


IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])
METRIC = pm.logit_diff(torch.tensor([7, 7]), torch.tensor([[9, 11], [9, 11]]))


@pytest.mark.parametrize("kind", ["heads", "resid", "mixed"])
def test_nnsight_backend_equals_hooks_on_a_tiny_model(tiny, kind):
    model, tok = tiny
    sites = _variants(Dims.of(model), IDS.shape[1])[kind]
    nn_model = to_nnsight(model, tok)
    assert is_nnsight(nn_model) and not is_nnsight(model)
    for fn in (activation_patch, attribution_patch):
        ref = fn(model, sites, IDS, IDS.flip(-1), METRIC)
        got = fn(nn_model, sites, IDS, IDS.flip(-1), METRIC)  # an nnsight model picks the backend by itself
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0, msg=fn.__name__)
    small = activation_patch(nn_model, sites, IDS, IDS.flip(-1), METRIC, max_batch=4)  # chunked variants
    torch.testing.assert_close(small, activation_patch(model, sites, IDS, IDS.flip(-1), METRIC), atol=ATOL, rtol=0)
    assert hook_count(model) == 0


def test_cmap_through_nnsight_with_a_tuned_side(tiny):
    """Cross-model patching (CMAP): the source is a tuned Side (LoFiT offsets hooked while it runs)."""
    from workbench.methods.lofit import LofitConfig, LofitOffsets

    model, tok = tiny
    dims = Dims.of(model)
    lofit = LofitOffsets(LofitConfig(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=0.5), dims,
                         generator=torch.Generator().manual_seed(0))
    tuned = Side(model, lambda: lofit.attach(model))
    groups = [[Site(0, "attn.hook_z", head=1)], [Site(1, "attn.hook_z", head=0)], head_sites(dims)]
    ref = activation_patch(model, groups, IDS, IDS, METRIC, source_model=tuned)
    got = activation_patch_nnsight(model, groups, IDS, IDS, METRIC, source_model=tuned, tokenizer=tok)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert ref.abs().max() > 1e-3  # the tuned heads do change the metric
    assert hook_count(model) == 0


def test_cache_nnsight_layouts(tiny):
    from probes.patching import cache

    model, tok = tiny
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.0.attn.hook_k"]  # any order in, forward order run
    got, ref = cache_nnsight(model, IDS, names, tokenizer=tok), cache(model, IDS, names)
    for n in names:
        torch.testing.assert_close(got[n], ref[n], atol=ATOL, rtol=0, msg=n)


def test_backend_errors(tiny):
    model, _ = tiny
    with pytest.raises(ConfigError, match="backend must be one of"):
        activation_patch(model, [Site(0, "hook_resid_post")], IDS, IDS, METRIC, backend="pyvene")
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        activation_patch(model, [Site(0, "hook_resid_post")], IDS, IDS, METRIC, backend="nnsight")


def test_remote_refuses_a_side_with_local_hooks(tiny):
    """remote=True is never sent anywhere here (no network); a Side whose context hooks local modules is refused
    before any trace starts."""
    from workbench.methods.lofit import LofitConfig, LofitOffsets

    model, tok = tiny
    lofit = LofitOffsets(LofitConfig(top_k_heads=1, heads=[[0, 1]]), Dims.of(model))
    tuned = Side(model, lambda: lofit.attach(model))
    with pytest.raises(ConfigError, match="remote=True"):
        activation_patch_nnsight(tuned, [Site(0, "hook_resid_post")], IDS, IDS, METRIC, remote=True, tokenizer=tok)


@pytest.mark.real
def test_nnsight_patching_equals_hooks_on_smollm2(smollm2):
    model, tok, info = smollm2
    clean = tok("The apple is in Box F, the key is in Box C. Box C contains the", return_tensors="pt").input_ids
    corrupt = tok("The apple is in Box C, the key is in Box F. Box C contains the", return_tensors="pt").input_ids
    assert clean.shape == corrupt.shape
    key, apple = tok(" key").input_ids[-1], tok(" apple").input_ids[-1]
    metric = pm.logit_diff(torch.tensor([key]), torch.tensor([[key, apple]]))
    dims = Dims.of(model)
    heads = [s for s in head_sites(dims, pos=-1) if s.layer in (0, 14, 29)]
    sites = heads + [Site(l, "hook_resid_pre", pos=-1) for l in (5, 20)] + [Site(10, "mlp.hook_post")]
    nn_model = to_nnsight(model, tok)
    for fn in (activation_patch, attribution_patch):
        # nnsight recomputes every variant whole: compare with the hook path doing the same (the prefix-shared
        # default differs from it by fp32 rounding, ~1e-5; tests/test_shared_prefix.py checks that path)
        kw = {"share_prefix": False} if fn is activation_patch else {}
        ref = fn(model, sites, clean, corrupt, metric, **kw)
        got = fn(nn_model, sites, clean, corrupt, metric, backend="nnsight")
        assert ref.abs().max() > 1e-2  # the comparison is not between zeros
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0, msg=fn.__name__)  # measured: 1.9e-6 and 0
    assert hook_count(model) == 0
