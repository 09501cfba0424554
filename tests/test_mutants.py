"""Tests written for mutants that survived the fast suite (issue 17, item 5; studies/benchmarks/mutation.md).

Each test pins a behaviour of ``workbench/train.py``, ``probes/metrics.py`` or ``probes/patching.py`` that no
test checked, against a value computed here by hand or from a definition, not from the code under test.
All on the tiny random Llama; no ``real`` model.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch

from workbench.data import Example
from workbench.errors import ConfigError, DivergenceError
from workbench.methods.lofit import LofitConfig, LofitOffsets
from workbench.train import TrainConfig, fit


def _offsets(info, std=0.0, heads=((0, 1), (1, 0))):
    cfg = LofitConfig(top_k_heads=len(heads), heads=[list(h) for h in heads], init_std=std)
    return LofitOffsets(cfg, info.to_dict(), generator=torch.Generator().manual_seed(0))


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 2, "batch_size_prompts": 8, "lr": 1e-2, "progress": False,
                          "checkpoint_every_steps": 0, **kw})


# --- workbench/train.py: TrainConfig validation ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"lr": float("inf")}, {"lr": -1.0}, {"lr": 0.0}, {"lr": float("nan")},
    {"grad_clip_norm": -1.0}, {"weight_decay": -0.1},  # each alone (not only both) is refused
    {"divergence_loss_factor": 0.5}, {"divergence_loss_factor": 1.0},  # 0 < factor <= 1 guards nothing
    {"divergence_max_param_abs": -1.0}, {"divergence_max_param_abs": float("inf")},
    {"eval_every_steps": -1}, {"checkpoint_every_steps": -1}, {"max_steps": 0},
])
def test_train_config_refuses(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"divergence_loss_factor": 0.0}, {"divergence_loss_factor": 1.5},
                                    {"eval_every_steps": 0}, {"checkpoint_every_steps": 0}, {"grad_clip_norm": 0.0}])
def test_train_config_accepts_the_edges(kwargs):
    TrainConfig(**kwargs)


def test_train_config_divergence_defaults_are_the_documented_ones():
    """The class docstring states these defaults (and the README's divergence advice relies on them)."""
    cfg = TrainConfig()
    doc = TrainConfig.__doc__
    assert "(ratio, default 20)" in doc and cfg.divergence_loss_factor == 20.0
    assert "``divergence_warmup_steps`` (default 10)" in doc and cfg.divergence_warmup_steps == 10
    assert "``divergence_min_loss_nats`` (default 1 nat" in doc and cfg.divergence_min_loss_nats == 1.0
    assert "(parameter units, default 1e4)" in doc and cfg.divergence_max_param_abs == 1e4


# --- workbench/train.py: fit() ------------------------------------------------------------------------------------
def test_dpo_first_loss_is_log2_for_an_identity_intervention(tiny, tiny_examples):
    """At step 0 a zero-initialised LoFiT is the identity, so policy = reference for chosen and rejected, the
    DPO margin is 0 and the loss is −log σ(0) = log 2 (Rafailov et al. 2023, Eq. 7), whatever β."""
    model, info = tiny
    pairs = [Example(e.prompt_ids, (7,), rejected_ids=(9,)) for e in tiny_examples]
    res = fit(model, _offsets(info), pairs, _cfg(loss="dpo", dpo_beta=3.0, max_steps=1))
    assert res.losses[0] == pytest.approx(math.log(2), abs=1e-6)


def test_fit_computes_no_gradient_for_frozen_weights_and_restores_requires_grad(tiny, tiny_examples):
    model, info = tiny
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(before.values())
    inter = _offsets(info)
    fit(model, inter, tiny_examples, _cfg())
    assert all(p.grad is None for p in model.parameters())  # the frozen model never got a .grad
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is not None for p in inter.parameters())


def test_gradient_is_clipped_to_grad_clip_norm(tiny, tiny_examples):
    """After fit(), the trainable parameters hold the last step's gradient, clipped to ``grad_clip_norm``
    (global L2 norm), and unclipped with ``grad_clip_norm=0``."""
    model, info = tiny

    def last_grad_norm(clip):
        inter = _offsets(info, std=1e-2)
        fit(model, inter, tiny_examples, _cfg(max_steps=1, lr=1e-6, grad_clip_norm=clip))
        return float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in inter.parameters()])))

    raw = last_grad_norm(0.0)
    assert raw > 1e-2
    assert last_grad_norm(1e-3) == pytest.approx(1e-3, rel=1e-4)
    assert last_grad_norm(raw * 2) == pytest.approx(raw, rel=1e-5)  # below the threshold: untouched


def test_seconds_per_step_counts_only_the_steps_run(tiny, tiny_examples, tmp_path):
    model, info = tiny
    cfg = _cfg(max_steps=4, checkpoint_every_steps=2)
    fresh = fit(model, _offsets(info, std=1e-2), tiny_examples, cfg)
    assert fresh.steps == 4 and fresh.resumed_from_step is None
    assert fresh.seconds_per_step == pytest.approx(fresh.wall_time_s / 4)

    class Killed(Exception):
        pass

    def kill_at_2(step, _loss):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(model, _offsets(info, std=1e-2), tiny_examples, cfg, out_dir=tmp_path, on_step=kill_at_2)
    resumed = fit(model, _offsets(info, std=1e-2), tiny_examples, cfg, out_dir=tmp_path)
    assert resumed.resumed_from_step == 2 and len(resumed.losses) == 4
    assert resumed.seconds_per_step == pytest.approx(resumed.wall_time_s / 2)  # 2 steps run in this call


def test_eval_schedule(tiny, tiny_examples):
    """eval_every_steps=2 over 5 steps: evaluations after steps 2 and 4, then the final one at 5; over 4 steps
    the one at 4 is the final one (not repeated)."""
    model, info = tiny
    calls = []

    def eval_fn():
        calls.append(1)
        return {"n": len(calls)}

    res = fit(model, _offsets(info, std=1e-2), tiny_examples, _cfg(max_steps=5, eval_every_steps=2), eval_fn=eval_fn)
    assert [e["step"] for e in res.evals] == [2, 4, 5] and len(calls) == 3
    calls.clear()
    res = fit(model, _offsets(info, std=1e-2), tiny_examples, _cfg(max_steps=4, eval_every_steps=2), eval_fn=eval_fn)
    assert [e["step"] for e in res.evals] == [2, 4] and len(calls) == 2
    calls.clear()
    res = fit(model, _offsets(info, std=1e-2), tiny_examples, _cfg(max_steps=3), eval_fn=eval_fn)
    assert [e["step"] for e in res.evals] == [3]


def test_divergence_checkpoint_keeps_the_evaluations_up_to_the_good_step(tiny, tiny_examples, tmp_path):
    """A parameter bound trips at some step s; the checkpoint saved at the last good state (step s) holds the
    evaluations of steps 1..s, so a resumption that stops at s reports exactly those."""
    model, info = tiny
    cfg = _cfg(max_steps=30, eval_every_steps=1, lr=1e-2, divergence_max_param_abs=0.035)
    with pytest.raises(DivergenceError) as err:
        fit(model, _offsets(info), tiny_examples, cfg, out_dir=tmp_path, eval_fn=lambda: {"x": 1.0})
    s = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    assert s >= 2  # AdamW moves each offset by about lr per step: several steps pass before |p| > 0.035
    resumed = fit(model, _offsets(info), tiny_examples, replace(cfg, max_steps=s, divergence_max_param_abs=0.0),
                  out_dir=tmp_path, eval_fn=lambda: {"x": 2.0})
    assert resumed.resumed_from_step == s
    assert [(e["step"], e["x"]) for e in resumed.evals] == [(k, 1.0) for k in range(1, s + 1)]


# --- probes/metrics.py ---------------------------------------------------------------------------------------------
def test_accuracy_candidates_check_is_per_prompt():
    """Every prompt's correct id must be among *its own* candidates: row 1's answer 7 is missing from [6, 8]
    although each candidate column holds some row's answer."""
    from probes.metrics import accuracy

    with pytest.raises(ConfigError, match="among that prompt's candidates"):
        accuracy(torch.tensor([5, 7]), torch.tensor([[5, 5], [6, 8]]))
    accuracy(torch.tensor([5, 8]), torch.tensor([[5, 6], [6, 8]]))  # each row holds its own answer: accepted


def test_logit_diff_batch_of_one_and_many():
    """Hand values: correct logit minus the largest logit among the other candidates, per row."""
    from probes.metrics import logit_diff

    logits = torch.tensor([[0.0, 1.0, 3.0, -2.0], [2.0, 0.5, -1.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    got = logit_diff(torch.tensor([1, 3, 0]), torch.tensor([[1, 2, 3], [0, 1, 3], [1, 2, 3]]))(logits)
    assert got.shape == (3,) and got.tolist() == [1.0 - 3.0, 4.0 - 2.0, 0.0]
    one = logit_diff(torch.tensor([2]), torch.tensor([[0, 3]]))(logits[:1])
    assert one.shape == (1,) and one.tolist() == [3.0]


# --- probes/patching.py --------------------------------------------------------------------------------------------
def test_mean_activations_in_chunks_equal_the_hand_mean(tiny):
    """hook_resid_pre of block 0 is the token embedding and of block 1 the first decoder layer's output
    (transformers' hidden_states[1]); their position-wise means over 7 prompts, read in chunks of 3."""
    from probes.patching import cache, mean_activations

    model, _ = tiny
    ids = torch.randint(3, 64, (7, 5), generator=torch.Generator().manual_seed(4))
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    means = mean_activations(model, ids, names, max_batch=3)
    for name, ref in zip(names, hidden[:2]):
        assert means[name].shape == (1, 5, 16)
        assert torch.allclose(means[name][0], ref.double().mean(0).float(), atol=1e-6)
    c = cache(model, ids, names[:1])
    assert c[names[0]].shape == (7, 5, 16) and torch.equal(c[names[0]], hidden[0])


def test_as_head_scores_error_names_both_counts_and_grid_is_layer_major(tiny):
    from probes.patching import as_head_scores
    from workbench.architecture import Dims

    model, _ = tiny
    dims = Dims.of(model)  # 2 layers x 2 heads
    with pytest.raises(ConfigError, match=r"expected 4 head effects, got 3$"):
        as_head_scores(torch.zeros(3, 5), dims)
    effects = torch.tensor([[1.0, 3.0], [2.0, 2.0], [-4.0, 0.0], [5.0, 7.0]])  # head_sites order: (0,0) (0,1) (1,0) (1,1)
    hs = as_head_scores(effects, dims)
    assert hs.scores.tolist() == [[2.0, 2.0], [-2.0, 6.0]]
    assert hs.top(1) == [(1, 0)] and hs.top(1, largest=True) == [(1, 1)]


def test_run_patched_records_activations_in_the_graph_only_with_grad(tiny):
    """``grad=True`` keeps recorded activations in the autograd graph (their gradient reaches the embedding);
    the default records detached values."""
    from probes.patching import run_patched

    model, _ = tiny
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(5))
    name = "blocks.1.hook_resid_pre"
    _, rec = run_patched(model, ids, [], 1, record=[name], grad=True)
    assert rec[name].shape == (1, 2, 5, 16) and rec[name].requires_grad
    rec[name].sum().backward()
    emb = model.get_input_embeddings().weight
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0
    model.zero_grad(set_to_none=True)
    _, rec = run_patched(model, ids, [], 1, record=[name])
    assert not rec[name].requires_grad
