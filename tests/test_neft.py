"""NeFT (Xu et al., COLING 2025): hooked neuron deltas, exact merge/export, selection, base weights untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from workbench.errors import CheckpointError, ConfigError, MismatchError
from workbench.hooked import hook_count
from workbench.methods import get_method, load_intervention, save_intervention
from workbench.methods.neft import (
    NeftConfig,
    NeftIntervention,
    brief_full_finetune,
    export_hf,
    n_neurons_for_budget,
    score_neurons,
    select_neurons,
    train_neft,
)
from workbench.train import TrainConfig, fit

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])
NEURONS = [[0, 3], [1, 0], [1, 17], [1, 31]]


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def neft(info, std=0.0, neurons=NEURONS, seed=0):
    return NeftIntervention(NeftConfig(neurons=neurons, init_std=std), info.to_dict(), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert not changed, f"base weights changed: {changed}"


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --- the intervention -----------------------------------------------------------------------------
def test_registered_and_parameter_shapes(tiny):
    _, info = tiny
    assert get_method("neft").intervention_cls is NeftIntervention
    inter = neft(info, std=0.1)
    assert {k: tuple(v.shape) for k, v in inter.state_dict().items()} == {k: (4, info.d_model) for k in ("d_gate", "d_up", "d_down")}
    assert inter.n_trainable() == len(NEURONS) * 3 * info.d_model
    assert [(s.layer, s.neuron) for s in inter.sites()] == [tuple(n) for n in NEURONS]


def test_zero_init_is_identity_and_hooks_are_removed(tiny):
    model, info = tiny
    ref = logits(model)
    inter = neft(info)
    with inter.attach(model):
        assert hook_count(model) == 3 * 2  # gate, up, down in each touched layer
        assert torch.equal(logits(model), ref)
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"), neft(info, std=0.5).attach(model):
        assert not torch.allclose(logits(model), ref)
        raise RuntimeError("boom")
    assert hook_count(model) == 0 and torch.equal(logits(model), ref)


def test_hooks_equal_editing_the_rows_and_columns(tiny):
    model, info = tiny
    inter = neft(info, std=0.3)
    with inter.attach(model):
        hooked = logits(model)
    # reference: edit the weights by hand, neuron by neuron
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for r, (layer, i) in enumerate(NEURONS):
            mlp = edited.model.layers[layer].mlp
            mlp.gate_proj.weight[i] += inter.d_gate[r]
            mlp.up_proj.weight[i] += inter.d_up[r]
            mlp.down_proj.weight[:, i] += inter.d_down[r]
    torch.testing.assert_close(logits(edited), hooked, atol=1e-5, rtol=1e-5)
    merged = copy.deepcopy(model)
    inter.merge_into(merged)
    torch.testing.assert_close(logits(merged), hooked, atol=1e-5, rtol=1e-5)
    # merge touches exactly the selected rows / columns
    diff = {k for k, v in merged.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert diff == {f"model.layers.{l}.mlp.{p}_proj.weight" for l in (0, 1) for p in ("gate", "up", "down")}
    g0 = merged.model.layers[0].mlp.gate_proj.weight != model.model.layers[0].mlp.gate_proj.weight
    assert g0.any(dim=1).nonzero().flatten().tolist() == [3]
    d1 = merged.model.layers[1].mlp.down_proj.weight != model.model.layers[1].mlp.down_proj.weight
    assert d1.any(dim=0).nonzero().flatten().tolist() == [0, 17, 31]


def test_merge_while_attached_is_refused(tiny):
    model, info = tiny
    inter = neft(info, std=0.1)
    with inter.attach(model), pytest.raises(ConfigError, match="while the intervention is attached"):
        inter.merge_into(copy.deepcopy(model))


def test_training_lowers_loss_and_leaves_every_base_weight_bitwise_unchanged(tiny, tiny_examples):
    model, info = tiny
    before = snapshot(model)
    inter = neft(info)
    result = fit(model, inter, tiny_examples, TrainConfig(max_steps=15, lr=5e-2, batch_size_prompts=32, weight_decay=0.1, progress=False))
    assert result.losses[-1] < result.losses[0] - 0.05
    assert_bitwise_unchanged(model, before)
    assert hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())  # fit restored them
    assert all(p.abs().sum() > 0 for p in inter.parameters())  # all three deltas learned


def test_export_hf_reloads_as_a_plain_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, info = tiny
    inter = neft(info, std=0.3)
    with inter.attach(model):
        hooked = logits(model)
    before = snapshot(model)
    out = export_hf(model, inter, tmp_path / "export")
    export_hf(model, inter, tmp_path / "export")  # overwriting an existing export works
    assert (out / "model.safetensors").is_file() and (out / "workbench_export.json").is_file() and not list(tmp_path.glob(".*"))
    assert_bitwise_unchanged(model, before)
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    torch.testing.assert_close(logits(reloaded), hooked, atol=1e-5, rtol=1e-5)
    with inter.attach(model), pytest.raises(ConfigError, match="forward hook"):
        export_hf(model, inter, tmp_path / "x")


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    model, info = tiny
    inter = neft(info, std=0.2)
    inter.config.train = TrainConfig(max_steps=3, lr=1e-3)
    save_intervention(tmp_path / "a", inter, info)
    back = load_intervention(tmp_path / "a", info)
    assert isinstance(back, NeftIntervention) and back.config.neurons == NEURONS and back.config.train == inter.config.train
    for name in ("d_gate", "d_up", "d_down"):
        assert torch.equal(getattr(back, name), getattr(inter, name))
    with inter.attach(model):
        ref = logits(model)
    with back.attach(model):
        assert torch.equal(logits(model), ref)


@pytest.mark.parametrize("neurons, match", [
    ([], "needs config.neurons"),
    ([[0, 32]], r"index 32 out of range \(d_mlp = 32"),
    ([[0, -1]], "index -1 out of range"),
    ([[2, 0]], "layer 2 does not exist"),
    ([[1, 4], [1, 4]], "listed twice"),
])
def test_bad_neurons_are_refused(tiny, neurons, match):
    _, info = tiny
    with pytest.raises(ConfigError, match=match):
        neft(info, neurons=neurons)


def test_other_model_shapes_are_refused(tiny):
    from conftest import make_tiny

    _, info = tiny
    wide, _ = make_tiny(hidden_size=32)
    with pytest.raises(MismatchError, match="do not match"), neft(info).attach(wide):
        pass
    assert hook_count(wide) == 0


@pytest.mark.parametrize("kwargs", [dict(budget_fraction=0), dict(budget_fraction=-0.1), dict(budget_fraction=1.5),
                                    dict(budget_fraction=float("nan")), dict(selection="high"), dict(init_std=-1.0),
                                    dict(select_steps=0), dict(select_lr=0.0), dict(neurons=[[1]])])
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        NeftConfig(**kwargs)


# --- selection ------------------------------------------------------------------------------------
def test_scores_pick_the_changed_neurons(tiny):
    model, info = tiny
    tuned = copy.deepcopy(model)
    with torch.no_grad():  # change three neurons by different amounts, one through each of its weights
        tuned.model.layers[1].mlp.gate_proj.weight[5] *= -1.0  # most changed
        tuned.model.layers[0].mlp.down_proj.weight[:, 20] += 0.5
        tuned.model.layers[1].mlp.up_proj.weight[9] += 0.01  # least changed of the three
    scores = score_neurons(model, tuned)
    assert scores.shape == (2, 32) and scores.dtype == torch.float64
    assert int((scores < 1).sum()) == 3 and scores[1, 5] < scores[0, 20] < scores[1, 9] < 1
    cost = 3 * info.d_model
    total = n_params(model)
    for k, want in [(1, [[1, 5]]), (2, [[0, 20], [1, 5]]), (3, [[0, 20], [1, 5], [1, 9]])]:
        assert select_neurons(scores, k * cost / total, info.to_dict(), total) == want
    most = select_neurons(scores, 2 * cost / total, info.to_dict(), total, mode="reversed")
    assert most == [[0, 0], [0, 1]]  # all unchanged neurons tie at 1.0; ties keep (layer, index) order


def test_reversed_and_random_selection():
    dims = dict(n_layers=3, d_mlp=10, d_model=4)
    scores = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    total, k = 1000, 5
    budget = k * 12 / total
    order = scores.flatten().argsort()
    as_pairs = lambda flat: sorted([int(i) // 10, int(i) % 10] for i in flat)  # noqa: E731
    assert select_neurons(scores, budget, dims, total, "low") == as_pairs(order[:k])
    assert select_neurons(scores, budget, dims, total, "reversed") == as_pairs(order[-k:])
    r1 = select_neurons(None, budget, dims, total, "random", seed=1)
    assert r1 == select_neurons(None, budget, dims, total, "random", seed=1)
    assert r1 != select_neurons(None, budget, dims, total, "random", seed=2)
    assert len(r1) == k and len({tuple(n) for n in r1}) == k
    with pytest.raises(ConfigError, match="needs scores of shape"):
        select_neurons(None, budget, dims, total, "low")
    with pytest.raises(ConfigError, match="mode must be one of"):
        select_neurons(scores, budget, dims, total, "high")


@pytest.mark.parametrize("budget, match", [(0.0, r"in \(0, 1\]"), (-0.01, r"in \(0, 1\]"), (1.01, r"in \(0, 1\]"),
                                           (0.001, "buys no neuron"), (0.5, "model has only 64"), (1.0, "model has only 64")])
def test_budget_out_of_range(tiny, budget, match):
    model, info = tiny
    with pytest.raises(ConfigError, match=match):
        n_neurons_for_budget(budget, info.to_dict(), n_params(model))
    assert n_neurons_for_budget(0.01, info.to_dict(), n_params(model)) == 1  # 6736 params, 48 per neuron


def test_brief_finetune_leaves_base_alone_and_moves_mlp(tiny, tiny_examples):
    model, info = tiny
    before = snapshot(model)
    losses = []
    tuned = brief_full_finetune(model, tiny_examples, steps=3, lr=1e-3, batch_size=8, seed=0, on_step=lambda s, l: losses.append(l))
    assert_bitwise_unchanged(model, before)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    scores = score_neurons(model, tuned)
    assert (scores < 1).any() and (scores > 0.5).all()


def test_train_neft_pipeline(tiny, tiny_examples, tmp_path):
    model, info = tiny
    before = snapshot(model)
    cfg = NeftConfig(budget_fraction=4 * 48 / 6736, select_steps=3, select_lr=1e-3,
                     train=TrainConfig(max_steps=10, lr=5e-2, batch_size_prompts=32, progress=False))
    run = train_neft(model, info.to_dict(), tiny_examples, cfg, out_dir=tmp_path / "run")
    assert len(run.neurons) == 4 and run.neurons == run.intervention.config.neurons
    assert run.neurons == select_neurons(run.scores, cfg.budget_fraction, info.to_dict(), n_params(model))
    assert len(run.select_losses) == 3
    assert run.train_result.losses[-1] < run.train_result.losses[0]
    assert_bitwise_unchanged(model, before)
    assert hook_count(model) == 0
    again = train_neft(model, info.to_dict(), tiny_examples, cfg, out_dir=tmp_path / "run")  # reuses scores, resumes
    assert again.select_losses == [] and torch.equal(again.scores, run.scores) and again.train_result.resumed_from_step == 10
    with pytest.raises(CheckpointError, match="other selection settings"):
        train_neft(model, info.to_dict(), tiny_examples, NeftConfig(budget_fraction=cfg.budget_fraction, select_steps=4, train=cfg.train),
                   out_dir=tmp_path / "run")
    rand = train_neft(model, info.to_dict(), tiny_examples, NeftConfig(budget_fraction=cfg.budget_fraction, selection="random", train=cfg.train))
    assert rand.scores is None and rand.select_losses == [] and len(rand.neurons) == 4
    with pytest.raises(ConfigError, match="model has only 64"):
        train_neft(model, info.to_dict(), tiny_examples, NeftConfig(budget_fraction=0.9))


def test_finetune_entry_point_runs_the_recipe(tiny, tiny_examples):
    from workbench.finetune import finetune

    model, info = tiny
    before = snapshot(model)
    res = finetune("neft", model, info, tiny_examples, config={"budget_fraction": 2 * 48 / 6736, "select_steps": 2, "select_lr": 1e-3},
                   train={"max_steps": 5, "lr": 5e-2, "batch_size_prompts": 32, "progress": False})
    assert isinstance(res.intervention, NeftIntervention) and res.intervention.config.train.max_steps == 5
    assert res.details["n_neurons"] == 2 and sum(res.details["neurons_per_layer"]) == 2 and len(res.details["select_losses"]) == 2
    assert res.train_result.losses[-1] < res.train_result.losses[0]
    assert_bitwise_unchanged(model, before)


# --- real model -----------------------------------------------------------------------------------
@pytest.mark.real
def test_real_smollm2_smoke(smollm2):
    from workbench.tasks.entity_tracking import EntityTrackingConfig, generate
    from workbench.data import Example

    model, tok, info = smollm2
    split = generate(tok, EntityTrackingConfig(n_boxes=3, n_train=16, n_heldout=1, seed=0))
    examples = [Example(p.input_ids, (p.answer_token_id,)) for p in split.train]
    before = snapshot(model)
    cfg = NeftConfig(budget_fraction=0.005, select_steps=2, select_batch_size=2,
                     train=TrainConfig(max_steps=4, lr=1e-3, batch_size_prompts=4, progress=False))
    run = train_neft(model, info.to_dict(), examples, cfg, pad_id=tok.pad_token_id or 0)
    n_total = n_params(model)
    assert len(run.neurons) == int(0.005 * n_total // (3 * info.d_model))
    assert run.intervention.n_trainable() <= 0.005 * n_total
    assert run.train_result.losses[-1] < run.train_result.losses[0]
    assert_bitwise_unchanged(model, before)
    assert hook_count(model) == 0


def test_selection_digest_covers_the_answer_mask():
    """Chat examples with other assistant-turn masks train on other tokens: a resume must not reuse their scores."""
    from workbench.data import Example
    from workbench.methods.neft.trainer import _examples_digest

    plain = [Example((1, 2), (3, 4))]
    assert _examples_digest(plain) == _examples_digest([Example((1, 2), (3, 4), answer_mask=None)])
    assert _examples_digest([Example((1, 2), (3, 4), answer_mask=(1, 0))]) != _examples_digest([Example((1, 2), (3, 4), answer_mask=(1, 1))])
