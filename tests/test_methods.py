"""One table-driven test over every registered method (DESIGN.md): identity at zero init, a few steps
lower the loss, save → load is exact, export → reload matches the hooked model."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from workbench.export import export_hf, export_max_logit_diff
from workbench.hooked import hook_count
from workbench.methods import available_methods, get_method, load_intervention, save_intervention
from workbench.train import TrainConfig, fit

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])

#: method -> (config kwargs for a zero-initialised intervention on the tiny model, learning rate)
TABLE = {
    "lofit": (dict(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=0.0), 5e-2),
    "lora": (dict(r=4, alpha=8.0), 2e-2),
    "full": (dict(), 1e-2),
    "neft": (dict(neurons=[[0, 3], [1, 0], [1, 17]], init_std=0.0), 5e-2),
}


def build(name: str, info):
    spec = get_method(name)
    kwargs, lr = TABLE[name]
    return spec.intervention_cls(spec.config_cls(**kwargs), info.to_dict()), lr


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


#: Methods whose invariants differ and are tested in their own file: CAFT has no parameters of its own
#: (it ablates directions while another method trains), so it is not an identity and has no export.
EXEMPT = {"caft": "tests/test_caft.py"}


def test_every_registered_method_is_in_the_table():
    assert set(available_methods()) == set(TABLE) | set(EXEMPT), "add new methods to TABLE (and their invariants) here"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_method_invariants(name, tiny_examples, tmp_path):
    model, info = make_tiny()
    base = logits(model)
    inter, lr = build(name, info)
    with inter.attach(model):  # (a) a zero-initialised intervention is an exact no-op
        assert torch.equal(logits(model), base)
    result = fit(model, inter, tiny_examples, TrainConfig(max_steps=12, lr=lr, batch_size_prompts=32, progress=False))
    assert result.losses[-1] < result.losses[0] - 0.05  # (b) a few steps lower the loss
    assert torch.equal(logits(model), base), "the model outside attach() must stay the base model"
    with inter.attach(model):
        tuned = logits(model)
    assert not torch.allclose(tuned, base)

    save_intervention(tmp_path / "adapter", inter, info)  # (c) save -> load onto a fresh copy is exact
    fresh, _ = make_tiny()
    loaded = load_intervention(tmp_path / "adapter", info)
    with loaded.attach(fresh):
        assert torch.equal(logits(fresh), tuned)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in inter.state_dict().items()}

    clean, _ = make_tiny()  # (d) export -> reload as a plain HF model matches the hooked model
    out = export_hf(clean, inter, tmp_path / "exported", model_info=info)
    assert export_max_logit_diff(model, inter, out, IDS) < 1e-5
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", ["lora", "full"])
def test_methods_inside_the_model_restore_base_on_exit_and_error(name):
    model, info = make_tiny()
    base = logits(model)
    inter, _ = build(name, info)
    inter.bind(model)
    with torch.no_grad():
        for p in inter.parameters():
            p.add_(0.1)
    with inter.attach(model):
        assert not torch.allclose(logits(model), base)
    with pytest.raises(RuntimeError, match="boom"):
        with inter.attach(model):
            raise RuntimeError("boom")
    assert torch.equal(logits(model), base)
    assert hook_count(model) == 0


def test_dpo_prefers_chosen_answers(tiny_examples):
    from workbench.data import Example

    model, info = make_tiny()
    pairs = [Example(e.prompt_ids, (7,), rejected_ids=(9,)) for e in tiny_examples]
    inter, _ = build("lofit", info)
    result = fit(model, inter, pairs, TrainConfig(max_steps=10, lr=5e-2, batch_size_prompts=16, loss="dpo", progress=False))
    assert result.losses[0] == pytest.approx(0.6931, abs=1e-3)  # zero init: policy == reference, -log σ(0)
    assert result.losses[-1] < result.losses[0]
    with pytest.raises(Exception, match="rejected_ids"):
        fit(model, inter, tiny_examples, TrainConfig(max_steps=1, loss="dpo", progress=False))
