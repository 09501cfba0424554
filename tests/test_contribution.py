"""TuCo decomposition (probes/contribution.py): exactness, α-scaling end points, bounds, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from probes.contribution import Decomposition, alpha_forward, decompose, tuco, tuned_from_intervention
from conftest import make_tiny
from workbench.errors import ConfigError, MismatchError
from workbench.hooked import hook_count


def _perturbed(base: torch.nn.Module, std: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """A 'fully fine-tuned' copy: every weight moves (embedding, layers, final norm, lm_head)."""
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return tuned


def _batch(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding on one row
    return ids, mask


@torch.no_grad()
def _reference(model, ids, mask):
    box = []
    handle = model.model.norm.register_forward_pre_hook(lambda _m, args: box.append(args[0]))
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()
    return logits, box[0]


@pytest.fixture
def pair():
    base, _ = make_tiny(0)
    return base, _perturbed(base)


def test_reconstruction_is_exact(pair):
    base, tuned = pair
    ids, mask = _batch()
    d = decompose(base, tuned, ids, mask)
    _, x_final = _reference(tuned, ids, mask)
    assert d.ptc.shape == d.ftc.shape == (3, 3, 7, 16)  # n_layers + 1 components
    torch.testing.assert_close(d.residual(), x_final, atol=1e-5, rtol=0)
    d64 = decompose(base, tuned, ids, mask, dtype=torch.float64)
    assert d64.ptc.dtype == torch.float64
    assert (d64.residual() - x_final.double()).abs().max() < 1e-6
    # components: embedding difference, and each layer's update difference on the tuned stream
    torch.testing.assert_close(d.embedding()[1], tuned.model.embed_tokens(ids) - base.model.embed_tokens(ids))
    assert d.layer(1)[1].abs().max() > 0
    assert d.last_pos.tolist() == [6, 3, 6]
    assert hook_count(base) == hook_count(tuned) == 0


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_end_points_give_base_and_tuned_logits(pair, alpha):
    base, tuned = pair
    ids, mask = _batch()
    ref, _ = _reference(base if alpha == 0 else tuned, ids, mask)
    out = alpha_forward(base, tuned, ids, alpha, attention_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert hook_count(base) == hook_count(tuned) == 0


def test_alpha_interpolates_and_layer_subsets(pair):
    base, tuned = pair
    ids, _ = _batch()
    lb, lt = _reference(base, ids, None)[0], _reference(tuned, ids, None)[0]
    mid = alpha_forward(base, tuned, ids, 0.5)
    assert not torch.allclose(mid, lb) and not torch.allclose(mid, lt)
    # the readout differs (every weight moved): its interpolation must also hold for the last position only
    torch.testing.assert_close(alpha_forward(base, tuned, ids, 0.5, logits_to_keep=1), mid[:, -1:], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="logits_to_keep"):
        alpha_forward(base, tuned, ids, 0.5, logits_to_keep=-1)
    # α on a subset of layers only: the rest (and embedding, readout) stay tuned, so α = 1 is the tuned model
    torch.testing.assert_close(alpha_forward(base, tuned, ids, 1.0, layers=[0]), lt, atol=1e-5, rtol=0)
    assert not torch.allclose(alpha_forward(base, tuned, ids, 0.0, layers=[1]), lt)


def test_tuco_zero_for_identical_models():
    base, _ = make_tiny(0)
    ids, mask = _batch()
    assert torch.equal(tuco(base, copy.deepcopy(base), ids, mask), torch.zeros(3))
    assert torch.equal(tuco(base, base, ids, mask), torch.zeros(3))  # the same module object
    assert torch.equal(decompose(base, base, ids, mask).ftc, torch.zeros(3, 3, 7, 16))


@pytest.mark.parametrize("std", [1e-3, 0.05, 1.0, 10.0])
def test_tuco_in_unit_interval_and_consistent(std):
    base, _ = make_tiny(0)
    tuned = _perturbed(base, std=std)
    ids, mask = _batch()
    t = tuco(base, tuned, ids, mask)
    assert t.shape == (3,) and bool(((t >= 0) & (t <= 1)).all()) and bool((t > 0).all())
    d = decompose(base, tuned, ids, mask)
    torch.testing.assert_close(d.tuco(), t, atol=1e-5, rtol=0)
    torch.testing.assert_close(d.tuco(include_embedding=False), tuco(base, tuned, ids, mask, include_embedding=False), atol=1e-5, rtol=0)
    # by hand at the last real token of row 1 (position 3)
    p, f = d.ptc[:, 1, 3].sum(0).norm(), d.ftc[:, 1, 3].sum(0).norm()
    assert math.isclose(float(t[1]), float(f / (p + f)), rel_tol=1e-4)


def test_tuco_grows_with_the_size_of_the_change():
    base, _ = make_tiny(0)
    ids, _ = _batch()
    values = [float(tuco(base, _perturbed(base, std=s), ids).mean()) for s in (1e-3, 1e-2, 1e-1)]
    assert values[0] < values[1] < values[2]


def test_padding_does_not_change_tuco(pair):
    base, tuned = pair
    ids, mask = _batch()
    alone = tuco(base, tuned, ids[1:2, :4])
    padded = tuco(base, tuned, ids, mask)[1:2]
    torch.testing.assert_close(padded, alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf"), None, "1", True])
def test_non_finite_alpha_is_refused(pair, alpha):
    base, tuned = pair
    with pytest.raises(ConfigError, match="alpha must be a finite number"):
        alpha_forward(base, tuned, _batch()[0], alpha)


def test_mismatched_models_are_refused():
    base, _ = make_tiny(0)
    wide, _ = make_tiny(0, hidden_size=32)
    ids = _batch()[0]
    with pytest.raises(MismatchError, match="hidden_size 16 vs 32"):
        decompose(base, wide, ids)
    shallow = copy.deepcopy(base)
    del shallow.model.layers[1]
    shallow.config.num_hidden_layers = 1
    for fn in (lambda: decompose(base, shallow, ids), lambda: tuco(shallow, base, ids), lambda: alpha_forward(base, shallow, ids, 0.5)):
        with pytest.raises(MismatchError, match="2 vs 1 decoder layers|1 vs 2 decoder layers"):
            fn()
    sdpa = copy.deepcopy(base)
    sdpa.config._attn_implementation = "sdpa"
    with pytest.raises(MismatchError, match="attention implementation"):
        tuco(base, sdpa, ids)
    assert hook_count(base) == hook_count(shallow) == 0


def test_layer_index_out_of_range_is_refused(pair):
    base, tuned = pair
    ids, mask = _batch()
    for layers in ([2], [-1], [0, 5]):
        with pytest.raises(ConfigError, match=r"out of range: the models have decoder layers 0\.\.1"):
            alpha_forward(base, tuned, ids, 0.5, layers=layers)
    d = decompose(base, tuned, ids, mask)
    with pytest.raises(ConfigError, match="out of range"):
        d.layer(2)
    assert hook_count(base) == hook_count(tuned) == 0


def test_bad_inputs_are_refused(pair):
    base, tuned = pair
    ids, mask = _batch()
    with pytest.raises(ConfigError, match="input_ids"):
        tuco(base, tuned, ids[0])
    with pytest.raises(ConfigError, match="attention_mask shape"):
        tuco(base, tuned, ids, mask[:, :3])
    mask[0] = 0
    with pytest.raises(ConfigError, match="no real token"):
        decompose(base, tuned, ids, mask)


def test_hooks_removed_when_the_forward_fails(pair):
    base, tuned = pair
    ids = _batch()[0]
    with pytest.raises(IndexError):
        tuco(base, tuned, ids + 1000)  # token ids beyond the vocabulary fail inside the embedding
    assert hook_count(base) == hook_count(tuned) == 0


def test_tuned_from_intervention_merges_exactly(tiny):
    from workbench.methods.lofit import LofitConfig, LofitOffsets

    base, info = tiny
    lofit = LofitOffsets(LofitConfig(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=0.5), info.to_dict(),
                         generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = tuned_from_intervention(base, lofit)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base untouched
    ids = _batch()[0]
    with torch.no_grad(), lofit.attach(base):
        hooked = base(input_ids=ids).logits
    torch.testing.assert_close(alpha_forward(base, tuned, ids, 1.0), hooked, atol=1e-5, rtol=0)
    d = decompose(base, tuned, ids)
    assert isinstance(d, Decomposition) and torch.equal(d.embedding()[1], torch.zeros_like(d.embedding()[1]))


def test_tuned_from_intervention_without_merge_is_refused(tiny):
    from workbench.intervention import Intervention

    base, info = tiny

    class NoMerge(Intervention):
        def sites(self):
            return []

    with pytest.raises(ConfigError, match="cannot be merged"):
        tuned_from_intervention(base, NoMerge(None, info.to_dict()))


@pytest.mark.real
def test_real_model_lofit_merged_reconstruction_and_alpha_end_points(smollm2):
    """SmolLM2-135M-Instruct vs a LoFiT-merged copy (random offsets, init_std 0.5, three heads)."""
    from workbench.methods.lofit import LofitConfig, LofitOffsets
    from workbench.pair import ModelPair

    base, tok, info = smollm2
    lofit = LofitOffsets(LofitConfig(top_k_heads=3, heads=[[3, 1], [10, 4], [25, 8]], init_std=0.5), info.to_dict(),
                         generator=torch.Generator().manual_seed(0))
    tuned = tuned_from_intervention(base, lofit)
    pair = ModelPair(base, tuned, tok, info, info)
    ids, mask = pair.tokenize(["The Eiffel Tower is in the city of", "The apple is in Box F, the key is in Box C. Box C contains the"])
    d = decompose(base, tuned, ids, mask, dtype=torch.float64)
    ref_tuned, x_final = _reference(tuned, ids, mask)
    ref_base, _ = _reference(base, ids, mask)
    # float64 components are exact differences of the fp32 activations (|x_L| reaches ~3e3 in SmolLM2)
    assert (d.residual() - x_final.double()).abs().max() < 1e-5
    # FTC is nonzero exactly at the three touched layers (component l + 1) and the embedding is unchanged
    nonzero = (d.ftc_norms() > 0).any(1).nonzero().flatten().tolist()
    assert nonzero == [4, 11, 26]
    torch.testing.assert_close(alpha_forward(base, tuned, ids, 0.0, attention_mask=mask), ref_base, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha_forward(base, tuned, ids, 1.0, attention_mask=mask), ref_tuned, atol=1e-5, rtol=0)
    t = d.tuco()
    assert bool(((t > 0) & (t < 1)).all())
    assert hook_count(base) == hook_count(tuned) == 0
