"""Attention path (issue 14): models load with SDPA; pattern readers switch to eager with ``eager_attention`` (or by
booting a bridge). Both paths give the same logits and the same activations at every Site we hook."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama_with_smollm2_tokenizer

from workbench.errors import ConfigError
from workbench.hooked import attn_implementation, eager_attention, record
from workbench.sites import Site

TOL = 1e-5  # fp32, stated in the issue: absolute on the tiny model; on SmolLM2 relative to each tensor's largest value
#: (its residual stream reaches |x| ≈ 2.3e4, where one fp32 ulp is 2e-3: measured SDPA vs eager max |Δ| there is 4.9e-4,
#: logits 3.8e-5 at |logit| ≤ 28, hook_z 6e-6 at ≤ 8.4).

SITES = lambda n_layers: [Site(l, h) for l in range(n_layers)  # noqa: E731
                          for h in ("attn.hook_z", "hook_resid_pre", "hook_resid_post", "hook_attn_out", "mlp.hook_post")]


def _both(model, ids, n_layers):
    """(logits, activations) under the model's own attention and then under eager attention."""
    out = []
    for ctx in (torch.no_grad, lambda: eager_attention(model)):
        with torch.no_grad(), ctx(), record(model, SITES(n_layers)) as rec:
            logits = model(input_ids=ids).logits
        out.append((logits, {s: rec[s] for s in SITES(n_layers)}))
    return out


def _assert_same(a, b, scaled: bool = False):
    (la, ra), (lb, rb) = a, b
    for what, x, y in [("logits", la, lb), *((str(s), ra[s], rb[s]) for s in ra)]:
        tol = TOL * max(1.0, float(y.abs().max())) if scaled else TOL
        diff = float((x - y).abs().max())
        assert diff <= tol, f"{what}: max |sdpa - eager| = {diff:.3g} > {tol:.3g}"


@pytest.fixture
def tiny_dir(tmp_path):
    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_load_model_defaults_to_sdpa_and_eager_on_request(tiny_dir):
    from workbench.models import load_model

    model, _, _ = load_model(tiny_dir, device="cpu")
    assert attn_implementation(model) == "sdpa"
    model, _, _ = load_model(tiny_dir, device="cpu", attn_implementation="eager")
    assert attn_implementation(model) == "eager"
    with pytest.raises(ConfigError, match="attn_implementation"):
        load_model(tiny_dir, device="cpu", attn_implementation="flash_attention_9")


def test_sdpa_and_eager_agree_on_the_tiny_model(tiny_dir):
    from workbench.models import load_model

    model, _, info = load_model(tiny_dir, device="cpu")
    ids = torch.tensor([[5, 9, 3, 7, 11, 2, 40, 41], [4, 4, 8, 1, 60, 33, 2, 2]])
    sdpa, eager = _both(model, ids, info.n_layers)
    _assert_same(sdpa, eager)
    assert attn_implementation(model) == "sdpa"  # restored


def test_eager_attention_restores_on_error_and_nests(tiny_dir):
    from workbench.models import load_model

    model, _, _ = load_model(tiny_dir, device="cpu")
    with pytest.raises(RuntimeError, match="boom"):
        with eager_attention(model):
            assert attn_implementation(model) == "eager"
            raise RuntimeError("boom")
    assert attn_implementation(model) == "sdpa"
    with eager_attention(model):
        with eager_attention(model):
            assert attn_implementation(model) == "eager"
        assert attn_implementation(model) == "eager"
    assert attn_implementation(model) == "sdpa"


def test_eager_attention_materialises_the_pattern(tiny_dir):
    """What the switch is for: transformers returns attention weights only on the eager path."""
    from workbench.models import load_model

    model, _, _ = load_model(tiny_dir, device="cpu")
    ids = torch.tensor([[5, 9, 3, 7]])
    with torch.no_grad(), eager_attention(model):
        att = model(input_ids=ids, output_attentions=True).attentions
    assert att is not None and att[0].shape == (1, 2, 4, 4)
    torch.testing.assert_close(att[0].sum(-1), torch.ones(1, 2, 4))


@pytest.mark.real
def test_sdpa_and_eager_agree_on_smollm2(smollm2):
    model, tok, info = smollm2  # shared: eager_attention switches back on exit (checked after the test)
    assert attn_implementation(model) == "sdpa"
    ids = tok("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    ids = torch.cat([ids, ids.flip(-1)])
    sdpa, eager = _both(model, ids, info.n_layers)
    _assert_same(sdpa, eager, scaled=True)


@pytest.mark.real
def test_bridge_switches_to_eager_and_matches():
    from workbench.hooked import to_bridge
    from workbench.models import load_model

    model, tok, info = load_model("smollm2-135m-instruct", device="cpu")
    ids = tok("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        sdpa_logits = model(input_ids=ids).logits
    bridge = to_bridge(model, tok, info.path)
    assert attn_implementation(model) == "eager"
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    assert float((logits - sdpa_logits).abs().max()) <= TOL * float(sdpa_logits.abs().max())
    assert cache["blocks.0.attn.hook_pattern"].shape[-2:] == (ids.shape[1], ids.shape[1])
