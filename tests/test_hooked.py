"""The hook scopes (hooks / record / module_hooks), the architecture lookups and the one Dims."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from workbench.architecture import (Dims, decoder_layers, final_norm, logit_softcap, mlp_projections, o_proj, readout,
                                    unembedding, w_o)
from workbench.errors import ConfigError
from workbench.hooked import hook_count, hooks, module_hooks, record
from workbench.intervention import check_dims
from workbench.methods import load_intervention, save_intervention
from workbench.methods.lofit import LofitConfig, LofitOffsets
from workbench.sites import Site

ROOT = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[1, 5, 9, 3, 7], [2, 4, 6, 8, 10]])


class Boom(Exception):
    pass


# --- hook scopes ---------------------------------------------------------------------------------------
def test_hooks_change_the_forward_and_always_come_off(tiny):
    model, _ = tiny
    with torch.no_grad():
        clean = model(IDS).logits
        with hooks(model, {Site(0, "hook_resid_post"): lambda x: x * 0}):
            assert hook_count(model) == 1
            zeroed = model(IDS).logits
        assert hook_count(model) == 0
        assert not torch.allclose(clean, zeroed)
        assert torch.equal(model(IDS).logits, clean)
        with pytest.raises(Boom):
            with hooks(model, [(Site(0, "attn.hook_z"), lambda z: z), (Site(1, "mlp.hook_post"), lambda h: None)]):
                assert hook_count(model) == 2
                raise Boom
    assert hook_count(model) == 0


def test_hooks_registration_failure_removes_the_ones_already_added(tiny):
    model, _ = tiny
    with pytest.raises(ConfigError):
        with hooks(model, [(Site(0, "hook_resid_post"), lambda x: None), (Site(7, "hook_resid_post"), lambda x: None)]):
            pass
    assert hook_count(model) == 0


def test_record_matches_output_hidden_states(tiny):
    model, _ = tiny
    sites = [Site(0, "hook_resid_post"), Site(1, "hook_resid_pre"), Site(0, "hook_resid_pre")]
    with torch.no_grad():
        ref = model(IDS, output_hidden_states=True).hidden_states  # [embeddings, after layer 0, final normed]
        before = hook_count(model)  # transformers keeps its own output-recording hooks once asked for hidden states
        with record(model, sites) as rec:
            model(IDS)
    assert hook_count(model) == before
    torch.testing.assert_close(rec[Site(0, "hook_resid_post")], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(rec[Site(1, "hook_resid_pre")], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(rec[Site(0, "hook_resid_pre")], ref[0], rtol=0, atol=0)
    assert set(rec) == set(sites) and len(rec) == 3


def test_record_select_dtype_device_and_several_calls(tiny):
    model, _ = tiny
    site = Site(0, "hook_resid_post")
    with torch.no_grad():
        ref = model(IDS, output_hidden_states=True).hidden_states[1]
        with record(model, [site], select=lambda a: a[:, -1], dtype=torch.float64, device="cpu") as rec:
            model(IDS)
            model(IDS[:1])
    assert rec[site].dtype == torch.float64 and rec[site].shape == (3, 16)
    assert [t.shape[0] for t in rec.calls(site)] == [2, 1]
    torch.testing.assert_close(rec[site][:2], ref[:, -1].double())


def test_record_head_layout_and_grad(tiny):
    model, info = tiny
    site = Site(1, "attn.hook_z")
    with record(model, [site], detach=False) as rec:
        model(IDS).logits.sum().backward()
    assert rec[site].shape == (2, 5, info.n_heads, info.d_head)
    assert rec[site].requires_grad
    model.zero_grad()


def test_record_stop_ends_the_forward_pass_and_the_body(tiny):
    model, _ = tiny
    calls = [0]
    reached = []
    with torch.no_grad(), module_hooks(pre=[(decoder_layers(model)[1], lambda *_: calls.__setitem__(0, calls[0] + 1))]):
        with record(model, [Site(0, "hook_resid_post"), Site(0, "hook_resid_pre")], stop=True) as rec:
            model(IDS)
            reached.append(True)  # not run: the forward pass was cut short
    assert calls == [0] and reached == []
    assert rec[Site(0, "hook_resid_post")].shape == (2, 5, 16)
    assert hook_count(model) == 0


def test_record_unreached_site_and_exception(tiny):
    model, _ = tiny
    with record(model, [Site(1, "hook_resid_post")]) as rec:
        pass
    with pytest.raises(KeyError):
        rec[Site(1, "hook_resid_post")]
    with pytest.raises(Boom):
        with record(model, [Site(1, "hook_resid_post")]):
            raise Boom
    assert hook_count(model) == 0


def test_module_hooks_come_off_on_error(tiny):
    model, _ = tiny
    layer = decoder_layers(model)[0]
    seen = []
    with pytest.raises(Boom):
        with module_hooks(pre=[(layer, lambda m, a, k: seen.append("pre"))],
                          post=[(layer, lambda m, a, k, o: seen.append("post"))], with_kwargs=True):
            assert hook_count(model) == 2
            with torch.no_grad():
                model(IDS)
            raise Boom
    assert seen == ["pre", "post"] and hook_count(model) == 0


def test_nobody_registers_hooks_by_hand():
    """Hook registration and handle removal live only in workbench/hooked.py (the hook scopes)."""
    pattern = re.compile(r"register_forward(_pre)?_hook|\.remove\(\)")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for floor in ("workbench", "probes", "studies", "app")
                 for p in (ROOT / floor).rglob("*.py") if p.name != "hooked.py" or p.parent.name != "workbench"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# --- architecture lookups --------------------------------------------------------------------------------
def test_parts_and_readout_reproduce_the_logits(tiny):
    model, info = tiny
    assert final_norm(model) is model.model.norm and unembedding(model) is model.lm_head
    assert o_proj(model, 1) is model.model.layers[1].self_attn.o_proj
    assert mlp_projections(model, 0)[2] is model.model.layers[0].mlp.down_proj
    w = model.model.layers[1].self_attn.o_proj.weight
    assert w_o(model, 1) is w and torch.equal(w_o(model, 1, head=1), w[:, info.d_head:])
    assert logit_softcap(model) is None
    with torch.no_grad(), record(model, [Site(1, "hook_resid_post")]) as rec:
        logits = model(IDS).logits
    torch.testing.assert_close(readout(model, rec[Site(1, "hook_resid_post")]), logits)
    with pytest.raises(ConfigError, match="head 2 out of range"):
        w_o(model, 0, head=2)
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        o_proj(model, 5)
    with pytest.raises(ConfigError, match="final norm"):
        final_norm(torch.nn.Linear(2, 2))


def test_readout_applies_the_gemma_logit_softcap():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=8, max_position_embeddings=64, final_logit_softcapping=0.5,
                       attn_implementation="eager")
    model = Gemma2ForCausalLM(cfg).eval()
    assert logit_softcap(model) == 0.5
    with torch.no_grad(), record(model, [Site(1, "hook_resid_post")]) as rec:
        logits = model(IDS).logits
    assert logits.abs().max() <= 0.5
    torch.testing.assert_close(readout(model, rec[Site(1, "hook_resid_post")]), logits)
    assert Dims.of(model).d_head == 8


# --- one Dims ------------------------------------------------------------------------------------------------
def test_dims_from_model_info_dict_and_old_adapters(tiny):
    model, info = tiny
    dims = Dims.of(model)
    assert dims == info.dims == Dims.coerce(info) == Dims.from_dict(info.to_dict()) == Dims.coerce(dims)
    assert dims.to_dict() == {k: info.to_dict()[k] for k in dims.to_dict()}
    assert info.to_dict()["n_layers"] == 2  # results.json keeps the flat keys
    old = {"n_layers": 2, "n_heads": 2, "d_head": 8, "d_model": 16, "d_mlp": 32}  # adapter.json before Dims
    assert Dims.from_dict(old).n_kv_heads is None and Dims.from_dict(old).d_vocab is None  # unknown, not guessed
    assert Dims.from_dict(old).mismatches(dims) == {} and Dims.from_dict(old).heads_at("attn.hook_v") == 2
    assert Dims.from_dict(old).to_dict() == old
    assert Dims.from_dict({**old, "d_mlp": 64}).mismatches(dims) == {"d_mlp": (64, 32)}
    with pytest.raises(ConfigError, match="d_mlp"):
        Dims.from_dict({k: v for k, v in old.items() if k != "d_mlp"})
    with pytest.raises(ConfigError):
        Dims.coerce(3)
    check_dims(old | {"n_kv_heads": 1}, info)
    with pytest.raises(ConfigError):
        check_dims(old | {"d_model": 32}, info)


def test_intervention_dims_from_dims_info_or_dict(tiny):
    model, info = tiny
    cfg = LofitConfig(heads=[[0, 1]])
    built = [LofitOffsets(cfg, d) for d in (info.dims, info, info.to_dict())]
    assert all(isinstance(b.dims, Dims) and b.dims == info.dims for b in built)
    assert built[0].dims.n_heads == 2


def test_adapter_saved_with_old_dims_json_still_loads(tiny, tmp_path):
    model, info = tiny
    inter = LofitOffsets(LofitConfig(heads=[[1, 0]], init_std=0.1), info)
    save_intervention(tmp_path, inter, info)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert meta["dims"] == info.dims.to_dict()
    meta["dims"] = {k: meta["dims"][k] for k in ("n_layers", "n_heads", "d_head", "d_model", "d_mlp")}
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    loaded = load_intervention(tmp_path, info)
    assert loaded.dims == info.dims and torch.equal(loaded.offsets, inter.offsets)
