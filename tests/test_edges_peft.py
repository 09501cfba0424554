"""Edge attribution patching on peft-wrapped models: LoRA on q / k / v / o_proj and the MLP projections of the tiny
random Llama (non-zero ``lora_B``, so the adapter changes the model) gives the same EAP / EAP-IG scores and exact edge
patching results as the same LoRA merged into the weights (``merge_and_unload``); the per-head split of a wrapped
``o_proj`` (:func:`workbench.architecture.head_writes`) against the merged weight; adapters switched off give the base
model's graph; and base vs tuned comparison on ModelPairs whose tuned side is a ``PeftModel`` or our LoRA intervention.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny
from torch import nn

from probes import metrics
from probes.edges import (
    Graph,
    compare_pair,
    eap,
    eap_ig,
    edge_patch_effects,
    faithfulness_curve,
    patch_edges,
)
from probes.edges.run import input_embeddings, sender_run
from workbench.architecture import (
    head_writes,
    o_proj,
    plain_linear,
    proj_offset,
    unwrap,
    w_o,
)
from workbench.errors import ConfigError

B, T = 3, 7
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _randomise_lora(model: nn.Module, seed: int = 11, scale: float = 0.3) -> None:
    """Random ``lora_A`` and ``lora_B`` (peft starts ``B`` at zero: an exact no-op adapter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)


def _peft_lora(base: nn.Module, dropout: float = 0.0) -> nn.Module:
    """A ``PeftModel`` with LoRA (r=2) on every attention and MLP projection of a copy of ``base``."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, target_modules=TARGETS)
    pm = get_peft_model(copy.deepcopy(base), cfg).eval()
    _randomise_lora(pm)
    return pm


@pytest.fixture(scope="module")
def data():
    """``(lora PeftModel, merged copy, base, clean, corrupt, metric)`` at fp64 (the comparison is then exact to ~1e-12;
    the adapters are fp64 too)."""
    base, _ = make_tiny(1, hidden_size=64)
    base.double()
    lora = _peft_lora(base)
    assert all(p.dtype == torch.float64 for p in lora.parameters())
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(4, 64, (B, T), generator=g)
    corrupt = torch.randint(4, 64, (B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    with torch.no_grad():
        assert (lora(input_ids=clean).logits - base(input_ids=clean).logits).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(lora(input_ids=clean).logits, merged(input_ids=clean).logits, atol=1e-12, rtol=1e-12)
    return lora, merged, base, clean, corrupt, metric


# ----------------------------------------------------------------------------- the per-head split of a wrapped o_proj
def test_wrapped_projections_are_called_with_the_effective_weight(data):
    lora, merged, _, _, _, _ = data
    hf = unwrap(lora)
    assert hf is lora.base_model.model and Graph.of(lora) == Graph.of(merged)
    d_in = merged.config.hidden_size
    z = torch.randn(2, 5, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for layer in range(2):
        proj, ref = o_proj(lora, layer), o_proj(merged, layer)
        assert plain_linear(proj) is None and plain_linear(ref) is ref  # a peft lora.Linear vs the merged nn.Linear
        torch.testing.assert_close(w_o(lora, layer), ref.weight, atol=1e-12, rtol=0)
        torch.testing.assert_close(w_o(lora, layer, head=1), ref.weight[:, d_in // 2:], atol=1e-12, rtol=0)
        with torch.no_grad():
            got, want = head_writes(proj, z, 2), head_writes(ref, z, 2)
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            torch.testing.assert_close(got.sum(0) + proj_offset(proj, d_in), proj(z), atol=1e-12, rtol=0)
        assert float((w_o(lora, layer) - proj.base_layer.weight).detach().abs().max()) > 1e-3  # the delta is in W_O


def test_a_wrapped_projection_with_a_bias_keeps_its_constant_out_of_the_heads():
    from peft import LoraConfig, inject_adapter_in_model

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.o_proj = nn.Linear(8, 5, bias=True, dtype=torch.float64)

    m = inject_adapter_in_model(LoraConfig(r=2, target_modules=["o_proj"]), Attn())
    _randomise_lora(m)
    ref = nn.Linear(8, 5, bias=True, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(m.o_proj.base_layer.weight + m.o_proj.get_delta_weight("default"))
        ref.bias.copy_(m.o_proj.base_layer.bias)
        z = torch.randn(3, 8, dtype=torch.float64)
        torch.testing.assert_close(proj_offset(m.o_proj, 8), ref.bias)
        torch.testing.assert_close(head_writes(m.o_proj, z, 4), head_writes(ref, z, 4), atol=1e-12, rtol=0)
        torch.testing.assert_close(head_writes(m.o_proj, z, 4).sum(0) + ref.bias, m.o_proj(z), atol=1e-12, rtol=0)
    with pytest.raises(ConfigError, match="split into 3 heads"):
        head_writes(m.o_proj, z, 3)


def test_the_residual_stream_is_the_sum_of_the_senders_with_lora(data):
    lora, merged, _, clean, _, _ = data
    g = Graph.of(lora)
    run = sender_run(lora, g, input_embeddings(lora, clean))  # checks the identity itself, at fp32-style tolerance
    ref = sender_run(merged, g, input_embeddings(merged, clean))
    torch.testing.assert_close(run.resid[-1], run.outputs.sum(0), atol=1e-12, rtol=0)  # no o_proj bias: Σ senders
    torch.testing.assert_close(run.outputs, ref.outputs, atol=1e-12, rtol=0)
    torch.testing.assert_close(run.logits, ref.logits, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- EAP, EAP-IG and exact patching
@pytest.mark.parametrize("receivers", ["layer", "head"])
def test_eap_on_lora_equals_eap_on_the_merged_model(data, receivers):
    lora, merged, base, clean, corrupt, metric = data
    for run in (lambda m: eap(m, clean, corrupt, metric, receivers=receivers),
                lambda m: eap_ig(m, clean, corrupt, metric, steps=3, receivers=receivers)):
        got, want = run(lora), run(merged)
        assert got.graph == want.graph
        torch.testing.assert_close(got.scores, want.scores, atol=1e-6, rtol=1e-6)
        assert float((got.scores - want.scores).abs().max()) < 1e-9  # fp64: only rounding differs
        assert got.clean_metric == pytest.approx(want.clean_metric, abs=1e-9)
        assert got.corrupt_metric == pytest.approx(want.corrupt_metric, abs=1e-9)
        assert float((got.scores - run(base).scores).abs().max()) > 1e-3  # the adapter changes the scores


@pytest.mark.parametrize("receivers", ["layer", "head"])
def test_exact_edge_patching_on_lora_equals_the_merged_model(data, receivers):
    lora, merged, _, clean, corrupt, metric = data
    g = Graph.of(lora, receivers)
    edges = g.edges()[:: max(1, g.n_edges // 12)]
    got = edge_patch_effects(lora, edges, clean, corrupt, metric, receivers=receivers)
    want = edge_patch_effects(merged, edges, clean, corrupt, metric, receivers=receivers)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert got.abs().max() > 1e-3
    sets = [edges[:3], edges[3:], g.adjacency & (torch.rand(g.adjacency.shape, generator=torch.Generator().manual_seed(1)) < 0.5)]
    torch.testing.assert_close(patch_edges(lora, sets, clean, corrupt, metric, receivers=receivers),
                               patch_edges(merged, sets, clean, corrupt, metric, receivers=receivers), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("receivers", ["layer", "head"])
def test_keeping_every_edge_gives_the_clean_metric_and_none_the_corrupt(data, receivers):
    lora, _, _, clean, corrupt, metric = data
    g = Graph.of(lora, receivers)
    vals = patch_edges(lora, [[], g.adjacency], clean, corrupt, metric, receivers=receivers)  # patched: none / all
    with torch.no_grad():
        ref = torch.stack([metric(lora(input_ids=i).logits[:, -1]) for i in (clean, corrupt)])
    torch.testing.assert_close(vals, ref, atol=1e-9, rtol=1e-9)
    scores = eap(lora, clean, corrupt, metric, receivers=receivers)
    curve = faithfulness_curve(lora, scores, clean, corrupt, metric, n_edges=[0, g.n_edges], n_random=0)
    assert curve.recovered == pytest.approx([0.0, 1.0], abs=1e-9)
    assert curve.metric[-1] == pytest.approx(float(ref[0].mean()), abs=1e-9)  # every edge kept: the clean metric


def test_disabled_adapters_give_the_base_models_scores(data):
    lora, _, base, clean, corrupt, metric = data
    with lora.disable_adapter():
        got = eap(lora, clean, corrupt, metric, receivers="head")
    torch.testing.assert_close(got.scores, eap(base, clean, corrupt, metric, receivers="head").scores, atol=1e-12, rtol=0)


def test_lora_dropout_in_training_mode_is_refused():
    base, _ = make_tiny(0)
    lora = _peft_lora(base, dropout=0.5).train()
    clean = torch.randint(4, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    metric = metrics.logit_diff(torch.tensor([5, 6]), torch.tensor([[7], [8]]))
    with pytest.raises(ConfigError, match="model.eval"):
        eap(lora, clean, clean.flip(0), metric)
    lora.eval()
    assert eap(lora, clean, clean.flip(0), metric).scores.abs().max() > 0


# ----------------------------------------------------------------------------- pairs
class _Vocab:
    def get_vocab(self):
        return {"a": 0}


def test_compare_pair_with_a_peft_model_as_the_tuned_side():
    from workbench.pair import ModelPair

    base, info = make_tiny(1, hidden_size=64)
    lora = _peft_lora(base)
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    pair = ModelPair(base, lora, _Vocab(), info, info, tuned_tokenizer=_Vocab())
    g = torch.Generator().manual_seed(4)
    clean, corrupt = torch.randint(4, 64, (B, T), generator=g), torch.randint(4, 64, (B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    cmp = compare_pair(pair, clean, corrupt, metric, steps=2, top_n=5)
    torch.testing.assert_close(cmp.tuned.scores, eap_ig(merged, clean, corrupt, metric, steps=2).scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cmp.base.scores, eap_ig(base, clean, corrupt, metric, steps=2).scores, atol=0, rtol=0)
    assert cmp.delta.abs().max() > 1e-3 and len(cmp.shared) + len(cmp.gained) == 5


def test_compare_pair_with_our_lora_intervention():
    """The pair a LoRA run folder loads into: the base model carries the injected adapters, enabled only while the pair
    runs the tuned side (``tuned_context``), with the base shared as ``tuned``."""
    from workbench.methods.lora import LoraIntervention, LoraMethodConfig
    from workbench.pair import ModelPair

    base, info = make_tiny(2, hidden_size=64)
    merged, plain = copy.deepcopy(base), copy.deepcopy(base)
    inter = LoraIntervention(LoraMethodConfig(r=2, alpha=4.0, target_modules=TARGETS), info)
    inter.bind(base)
    _randomise_lora(base)
    inter.merge_into(merged)
    assert type(o_proj(base, 0)) is not nn.Linear
    pair = ModelPair(base, base, _Vocab(), info, info, tuned_tokenizer=_Vocab(), tuned_intervention=inter)
    g = torch.Generator().manual_seed(6)
    clean, corrupt = torch.randint(4, 64, (B, T), generator=g), torch.randint(4, 64, (B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    cmp = compare_pair(pair, clean, corrupt, metric, steps=2, receivers="head")
    torch.testing.assert_close(cmp.tuned.scores, eap_ig(merged, clean, corrupt, metric, steps=2, receivers="head").scores,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cmp.base.scores, eap_ig(plain, clean, corrupt, metric, steps=2, receivers="head").scores,
                               atol=1e-6, rtol=1e-5)
    assert cmp.delta.abs().max() > 1e-3



def test_prompt_diff_reads_the_tuned_w_o_inside_the_tuned_context():
    """The per-head output difference of ``probes.diff.prompts`` reads the tuned side's W_O while its adapters are on:
    on the pair a LoRA run folder loads into, it equals the merged model's W_O (and the base's is the plain one)."""
    from probes.diff.prompts import head_output_weights
    from workbench.methods.lora import LoraIntervention, LoraMethodConfig
    from workbench.pair import ModelPair

    base, info = make_tiny(2, hidden_size=64)
    merged, plain = copy.deepcopy(base), copy.deepcopy(base)
    inter = LoraIntervention(LoraMethodConfig(r=2, alpha=4.0, target_modules=["o_proj"]), info)
    inter.bind(base)
    _randomise_lora(base)
    inter.merge_into(merged)
    pair = ModelPair(base, base, _Vocab(), info, info, tuned_tokenizer=_Vocab(), tuned_intervention=inter)
    w_base, w_tuned = head_output_weights(pair)
    for layer in range(2):
        torch.testing.assert_close(w_base[layer], w_o(plain, layer), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(w_tuned[layer], w_o(merged, layer), atol=1e-5, rtol=1e-4)
        assert (w_tuned[layer] - w_base[layer]).abs().max() > 1e-3
