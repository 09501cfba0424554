"""Tests that kill mutants of ``probes/metrics.py`` and ``probes/patching.py`` which survived the patching tests in
a run of ``studies/benchmarks/mutation.py`` (single AST changes; see studies/benchmarks/mutation.md).

Each test checks one behaviour against an independent reference: a hand-picked input whose answer is known, or a
plain transformers forward with a hand-written torch hook. All on the tiny random Llama; no ``real`` model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_tiny
from transformers import LlamaForCausalLM

from probes.metrics import accuracy
from probes.patching import (
    HeadScores,
    PatchLayer,
    activation_patch,
    attribution_patch,
    run_patched,
)
from workbench.errors import ConfigError, MismatchError
from workbench.sites import Site

T = 5
D_HEAD = 8  # tiny Llama: d_model 16, 2 heads


def _ids(seed: int, b: int = 1, t: int = T) -> torch.Tensor:
    return torch.randint(4, 64, (b, t), generator=torch.Generator().manual_seed(seed))


def _metric(logits: torch.Tensor) -> torch.Tensor:
    """A plain metric, independent of probes.metrics: logit of token 7 minus logit of token 9."""
    return logits[:, 7] - logits[:, 9]


@torch.no_grad()
def _hand_head_patch(model, target, source, layer: int, head: int, pos: int) -> torch.Tensor:
    """Final-position logits of ``target`` with head ``head``'s output (``o_proj`` input slice) at ``pos`` of
    ``layer`` taken from a run on ``source``: a plain forward with a hand-written pre-hook on ``o_proj``."""
    o_proj = model.model.layers[layer].self_attn.o_proj
    cols = slice(head * D_HEAD, (head + 1) * D_HEAD)
    seen = {}
    handle = o_proj.register_forward_pre_hook(lambda m, args: seen.setdefault("z", args[0].clone()))
    model(input_ids=source)
    handle.remove()

    def put(m, args):
        x = args[0].clone()
        x[:, pos, cols] = seen["z"][:, pos, cols]
        return (x,)

    handle = o_proj.register_forward_pre_hook(put)
    try:
        return model(input_ids=target).logits[:, -1].float()
    finally:
        handle.remove()


@torch.no_grad()
def _plain_logits(model, ids) -> torch.Tensor:
    return model(input_ids=ids).logits[:, -1].float()


# --- probes/metrics.py ---------------------------------------------------------------------------------------------
def test_accuracy_refuses_a_correct_id_missing_from_distinct_candidates_and_accepts_a_single_candidate():
    """metrics.py:51 (``==`` -> ``!=``): a prompt whose answer 4 is not among its (distinct) candidates [5, 6] is
    refused; a prompt whose only candidate is its answer is valid and scores 1.0 whatever the logits."""
    with pytest.raises(ConfigError, match="among that prompt's candidates"):
        accuracy(torch.tensor([4]), torch.tensor([[5, 6]]))
    with pytest.raises(ConfigError, match="among that prompt's candidates"):
        accuracy(torch.tensor([4, 5]), torch.tensor([[4, 6], [6, 7]]))  # row 1 lacks its answer
    acc = accuracy(torch.tensor([3, 2]), torch.tensor([[3], [2]]))
    assert acc(torch.tensor([[0.0, 5.0, 0.0, -1.0], [9.0, 0.0, 0.0, 0.0]])).tolist() == [1.0, 1.0]


# --- probes/patching.py: argument checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_variants", [0, -1, True, 1.5])
def test_run_patched_refuses_a_variant_count_that_is_not_a_positive_int(tiny, n_variants):
    """patching.py:141 (``or`` -> ``and``): 0, negative, bool and float variant counts are a ConfigError naming
    n_variants, not a torch error deep in the run (or, for True / 1.5, a silent run)."""
    model, _ = tiny
    with pytest.raises(ConfigError, match="n_variants must be an int >= 1"):
        run_patched(model, _ids(0), [], n_variants)


@pytest.mark.parametrize("patch", [activation_patch, attribution_patch])
def test_cross_model_patching_refuses_a_source_model_of_other_shape(tiny, patch):
    """patching.py:249 (``is not`` -> ``is``): a ``source_model`` whose heads have another d_head (d_model 32) is a
    MismatchError before anything runs, for activation and attribution patching alike."""
    model, _ = tiny
    wide, _ = make_tiny(0, hidden_size=32)
    with pytest.raises(MismatchError, match="different shapes"):
        patch(model, [Site(0, "attn.hook_z", head=0, pos=-1)], _ids(1), _ids(2), _metric, source_model=wide)


def test_head_scores_are_immutable():
    """patching.py:322 (``frozen=True`` -> ``False``): a HeadScores result cannot be changed after the fact (it is
    shared by studies' result objects)."""
    hs = HeadScores(torch.zeros(2, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        hs.scores = torch.ones(2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hs.label = "other"


# --- probes/patching.py: the engine against hand-written hooks ----------------------------------------------------
@pytest.mark.parametrize("share_prefix", [True, False])
def test_two_variants_of_one_prompt_each_get_their_own_mask(tiny, share_prefix):
    """patching.py:163 (``mask.shape[0] > 1`` -> ``> 2`` / ``shape[1] > 1``): two variants (head 0 of layer 0, head 1
    of layer 1, last position) on a batch of one prompt, run one variant per chunk (``max_batch=1``) or one layer
    group at a time: each variant's effect equals a plain forward with that one head patched by a hand-written hook."""
    model, _ = tiny
    target, source = _ids(3), _ids(4)
    sites = [Site(0, "attn.hook_z", head=0, pos=-1), Site(1, "attn.hook_z", head=1, pos=-1)]
    got = activation_patch(model, sites, target, source, _metric, max_batch=1, share_prefix=share_prefix)
    base = _metric(_plain_logits(model, target))
    assert got.shape == (2, 1)
    for v, s in enumerate(sites):
        ref = _metric(_hand_head_patch(model, target, source, s.layer, s.head, -1)) - base
        assert torch.allclose(got[v], ref, atol=1e-5), s
    assert float(got.abs().min()) > 1e-4  # both patches change the metric (the check above is not vacuous)


def test_per_variant_sources_patch_the_last_position_like_a_hand_hook(tiny):
    """patching.py:155 (per-variant source sliced along axis 2 -> 3): a ``PatchLayer(per_variant=True)`` that sets
    ``blocks.1.hook_resid_pre`` at the last position to a different random vector per variant (the prefix before it is
    shared) gives, per variant, the logits of a plain forward whose layer-0 output is overwritten there by hand."""
    model, _ = tiny
    ids = _ids(5, b=2)
    src = torch.randn(3, 2, T, 16, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(3, 1, T, dtype=torch.bool)
    mask[:, :, -1] = True
    logits, _ = run_patched(model, ids, [PatchLayer({"blocks.1.hook_resid_pre": mask},
                                                    {"blocks.1.hook_resid_pre": src}, per_variant=True)], 3)
    assert logits.shape == (3, 2, 64)
    for v in range(3):
        def put(m, args, out, v=v):
            out = out.clone()
            out[:, -1] = src[v][:, -1]
            return out

        handle = model.model.layers[0].register_forward_hook(put)
        try:
            ref = _plain_logits(model, ids)
        finally:
            handle.remove()
        assert torch.allclose(logits[v], ref, atol=1e-5), v
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


class _PastKeyValuesLlama(LlamaForCausalLM):
    """A Llama whose forward names its key/value cache ``past_key_values`` (as transformers releases before the
    ``cache`` rename do); otherwise the same model."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=past_key_values, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)


def test_layer_shared_sweep_on_a_model_whose_cache_argument_is_past_key_values(tiny):
    """patching.py:206 (``arg or "cache"`` -> ``arg and "cache"``): with a shared prefix and layer groups, the runs
    from layer 1 must hand the prefix cache over under the model's own argument name (``past_key_values``); every
    head's last-position effect equals a plain forward with a hand-written hook."""
    model, _ = tiny
    pkv = _PastKeyValuesLlama(model.config).eval()
    pkv.load_state_dict(model.state_dict())
    target, source = _ids(7, b=2), _ids(8, b=2)
    sites = [Site(layer, "attn.hook_z", head=head, pos=-1) for layer in range(2) for head in range(2)]
    got = activation_patch(pkv, sites, target, source, _metric)
    base = _metric(_plain_logits(model, target))
    for v, s in enumerate(sites):
        ref = _metric(_hand_head_patch(model, target, source, s.layer, s.head, -1)) - base
        assert torch.allclose(got[v], ref, atol=1e-5), s
