"""A Site's ``head=``, ``neuron=`` and ``pos=`` are honoured by the hook scopes (``hooks``, ``record``): the hook
function sees, and may replace, only the selected slice; the rest of the activation is untouched. Each case is
compared with a hand-written torch hook on the Hugging Face module, so a hook that touched another head, neuron or
position would change the logits and fail."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from workbench.errors import ConfigError
from workbench.hooked import hooks, record
from workbench.sites import Site

IDS = torch.tensor([[3, 7, 11, 5, 9], [2, 4, 6, 8, 10]])


def _logits_with_raw_pre_hook(model, module, edit):
    """Logits with ``edit(x)`` replacing ``module``'s input through a plain forward pre-hook."""
    handle = module.register_forward_pre_hook(lambda m, args: (edit(args[0].clone()), *args[1:]))
    try:
        with torch.no_grad():
            return model(input_ids=IDS).logits
    finally:
        handle.remove()


def _logits(model, fns):
    with torch.no_grad(), hooks(model, fns):
        return model(input_ids=IDS).logits


def test_one_head_is_ablated_alone():
    model, info = make_tiny(0)
    d_head = info.d_model // info.n_heads

    def zero_head_1(x):  # o_proj's input: [batch, pos, n_heads * d_head]
        x[..., d_head : 2 * d_head] = 0
        return x

    hand = _logits_with_raw_pre_hook(model, model.model.layers[1].self_attn.o_proj, zero_head_1)
    got = _logits(model, {Site(1, "attn.hook_z", head=1): lambda z: torch.zeros_like(z)})
    torch.testing.assert_close(got, hand)
    every_head = _logits(model, {Site(1, "attn.hook_z"): lambda z: torch.zeros_like(z)})
    assert (every_head - got).abs().max() > 1e-4  # one head is not all heads
    seen = []
    _logits(model, {Site(1, "attn.hook_z", head=0): lambda z: seen.append(z.shape)})
    assert seen == [torch.Size([2, 5, d_head])]


def test_one_neuron_is_ablated_alone():
    model, info = make_tiny(0)

    def zero_neuron_5(x):  # down_proj's input: [batch, pos, d_mlp]
        x[..., 5] = 0
        return x

    hand = _logits_with_raw_pre_hook(model, model.model.layers[0].mlp.down_proj, zero_neuron_5)
    got = _logits(model, {Site(0, "mlp.hook_post", neuron=5): lambda a: a * 0})
    torch.testing.assert_close(got, hand)
    assert (_logits(model, {Site(0, "mlp.hook_post"): lambda a: a * 0}) - got).abs().max() > 1e-4


def test_one_position_is_steered_alone():
    model, info = make_tiny(0)
    v = torch.linspace(-1, 1, info.d_model)

    def add_at_pos_2(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, 2] += v
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.model.layers[0].register_forward_hook(add_at_pos_2)
    try:
        with torch.no_grad():
            hand = model(input_ids=IDS).logits
    finally:
        handle.remove()
    got = _logits(model, {Site(0, "hook_resid_post", pos=2): lambda x: x + v})
    torch.testing.assert_close(got, hand)
    neg = _logits(model, {Site(0, "hook_resid_post", pos=-3): lambda x: x + v})  # -3 of 5 is position 2
    torch.testing.assert_close(neg, hand)
    plain = _logits(model, {})
    torch.testing.assert_close(got[:, :2], plain[:, :2])  # positions before 2 are untouched (causal)


def test_record_keeps_only_the_selected_slice():
    model, info = make_tiny(0)
    full, head, pos, both, neuron = (Site(1, "attn.hook_z"), Site(1, "attn.hook_z", head=1), Site(0, "hook_resid_post", pos=4),
                                     Site(1, "attn.hook_z", head=0, pos=-1), Site(1, "mlp.hook_post", neuron=7))
    with torch.no_grad(), record(model, [full, head, pos, both, neuron]) as rec:
        model(input_ids=IDS)
    with torch.no_grad(), record(model, [Site(0, "hook_resid_post"), Site(1, "mlp.hook_post")]) as whole:
        model(input_ids=IDS)
    assert torch.equal(rec[head], rec[full][:, :, 1]) and rec[head].shape == (2, 5, info.d_model // info.n_heads)
    assert torch.equal(rec[pos], whole[Site(0, "hook_resid_post")][:, 4])
    assert torch.equal(rec[both], rec[full][:, -1, 0])
    assert torch.equal(rec[neuron], whole[Site(1, "mlp.hook_post")][..., 7])


@pytest.mark.parametrize("site, match", [
    (Site(1, "attn.hook_z", head=9), "head 9 out of range"),
    (Site(0, "mlp.hook_post", neuron=10_000), "neuron 10000 out of range"),
    (Site(0, "hook_resid_post", pos="query_label"), "named position"),
])
def test_out_of_range_and_named_selectors_are_refused_before_the_forward(site, match):
    model, _ = make_tiny(0)
    with pytest.raises(ConfigError, match=match):
        with hooks(model, {site: lambda x: x}):
            raise AssertionError("registered a hook for a Site the model does not have")
    with pytest.raises(ConfigError, match=match):
        with record(model, [site]):
            pass


def test_a_position_past_the_prompt_is_refused():
    model, _ = make_tiny(0)
    with pytest.raises(ConfigError, match="position 7 out of range"):
        _logits(model, {Site(0, "hook_resid_post", pos=7): lambda x: x})
