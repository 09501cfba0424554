"""kernels/forward_from_layer.py: running decoder layers ``first..`` from a given residual stream equals the eager reference
(the full forward with layer ``first``'s input replaced), on tiny Llama, Qwen2, Mistral and Gemma 3 models, with and
without a key/value cache; hooks on the layers that run still fire; unsupported models are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from workbench_kernels.forward_from_layer import (
    layers_skipped,
    run_from_layer,
    run_from_layer_reference,
    supports,
)
from workbench.errors import ConfigError
from workbench.hooked import hooks, record
from workbench.sites import Site

V, B, T = 64, 2, 10


def _tiny(kind: str):
    """A tiny random causal LM of family ``kind`` (4 layers, d_model 16, 2 query heads, 1 key/value head)."""
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": V, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 64, "pad_token_id": 0, "attn_implementation": "eager"}
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common)).eval()
    if kind == "qwen2":  # sliding-window attention on the upper layers
        cfg = tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=2,
                             layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"])
        return tf.Qwen2ForCausalLM(cfg).eval()
    if kind == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=None)).eval()
    if kind == "gemma3":  # sliding / full layer types, scaled embeddings, soft-capped logits, its own rotary per type
        cfg = tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=4, final_logit_softcapping=5.0,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
        return tf.Gemma3ForCausalLM(cfg).eval()
    raise AssertionError(kind)


KINDS = ["llama", "qwen2", "mistral", "gemma3"]


def residuals_entering(model, ids, layers, cache=None):
    """``{layer: blocks.{layer}.hook_resid_pre}`` of a plain forward on ``ids`` (on top of ``cache``)."""
    sites = [Site(layer, "hook_resid_pre") for layer in layers]
    with torch.no_grad(), record(model, sites) as rec:
        model(input_ids=ids, **({} if cache is None else {"cache": cache, "use_cache": True}))
    return {s.layer: rec[s] for s in sites}


def _ids(seed: int, t: int = T):
    return torch.randint(4, V, (B, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_run_from_layer_equals_the_full_forward_with_the_layer_input_replaced(kind):
    model = _tiny(kind)
    assert supports(model)
    ids, other = _ids(1), _ids(2)
    n = model.config.num_hidden_layers
    with torch.no_grad():
        for first in range(n):
            hidden = residuals_entering(model, other, [first])[first]  # another prompt's stream: really used
            fast = run_from_layer(model, hidden, first, logits_to_keep=0)
            ref = run_from_layer_reference(model, ids, hidden, first, logits_to_keep=0)
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
            own = model(input_ids=ids).logits
            assert (fast - own).abs().max() > 1e-3  # the given stream changed the output (not a copy of the plain run)
        # from the prompt's own stream, the result is the plain forward's
        hidden = residuals_entering(model, ids, [2])[2]
        torch.testing.assert_close(run_from_layer(model, hidden, 2, logits_to_keep=0), model(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [3, 7])
def test_run_from_layer_on_top_of_a_cache_equals_the_reference(kind, p):
    """Positions ``p..`` on top of the cache of positions ``< p`` (past the sliding window of 4 when p = 7)."""
    model = _tiny(kind)
    ids, other = _ids(3), _ids(4)
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :p], use_cache=True).cache
        for first in (0, 1, 3):
            hidden = residuals_entering(model, other[:, p:], [first], cache=copy.deepcopy(prefix))[first]
            fast = run_from_layer(model, hidden, first, cache=copy.deepcopy(prefix), logits_to_keep=0)
            ref = run_from_layer_reference(model, ids[:, p:], hidden, first, cache=copy.deepcopy(prefix), logits_to_keep=0)
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        own = residuals_entering(model, ids[:, p:], [2], cache=copy.deepcopy(prefix))[2]
        full = model(input_ids=ids).logits[:, p:]
        torch.testing.assert_close(run_from_layer(model, own, 2, cache=copy.deepcopy(prefix), logits_to_keep=0), full,
                                   atol=1e-5, rtol=1e-5)


def test_hooks_fire_on_the_layers_that_run_only_and_layers_come_back():
    model = _tiny("gemma3")
    layers = list(model.model.layers)
    seen: list[int] = []
    def seen_at(layer):
        return lambda x: seen.append(layer)

    fns = {Site(layer, "attn.hook_z"): seen_at(layer) for layer in range(4)}
    hidden = torch.randn(B, T, 16)
    with torch.no_grad(), hooks(model, fns):
        run_from_layer(model, hidden, 2)
    assert seen == [2, 3]
    assert list(model.model.layers) == layers  # restored
    with pytest.raises(RuntimeError), layers_skipped(model, 3, hidden):
        raise RuntimeError("boom")
    assert list(model.model.layers) == layers  # restored on error too
    double = {Site(2, "hook_resid_pre"): lambda x: 2 * x}  # a patch at the first layer that runs is applied
    with torch.no_grad():
        with hooks(model, double):
            fast = run_from_layer(model, hidden, 2)
        torch.testing.assert_close(fast, run_from_layer(model, 2 * hidden, 2))


def test_unsupported_models_and_bad_arguments_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=2)).eval()
    assert not supports(gpt2)
    with pytest.raises(ConfigError, match="prefix runner supports"):
        run_from_layer(gpt2, torch.zeros(1, 3, 16), 1)
    model = _tiny("llama")
    with pytest.raises(ConfigError, match="first layer"):
        run_from_layer(model, torch.zeros(1, 3, 16), 4)
    with pytest.raises(ConfigError, match="hidden must be"):
        run_from_layer(model, torch.zeros(1, 3, 8), 1)
    model.config.model_type = "somethingelse"
    assert not supports(model)
