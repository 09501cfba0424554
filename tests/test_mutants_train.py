"""Tests for behaviours of ``workbench/train.py`` that the 2026-12-06 mutation run (studies/benchmarks/mutation.py, all
126 mutants of the file) showed no test checked: the accumulated step against the plain one (SFT, DPO, with a
regulariser), frozen weights left frozen, which interventions are moved to the model's device, the final checkpoint,
the epoch-wise batches, the progress bar, the non-finite message and the timing fields.

Each test compares with a value computed here (a hand-written loop, a definition, a clock read around the call), never
with the function's own output. All on the tiny random Llama; no ``real`` model.
"""

from __future__ import annotations

import time

import pytest
import torch

from workbench.data import Example
from workbench.errors import NonFiniteLossError
from workbench.methods.lofit import LofitConfig, LofitOffsets, LofitScaling
from workbench.methods.lora import LoraIntervention, LoraMethodConfig
from workbench.train import TrainConfig, batch_indices, fit


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"max_steps": 2, "batch_size_prompts": 8, "lr": 1e-2, "progress": False,
                          "checkpoint_every_steps": 0, **kw})


def _lofit(info, kind=LofitOffsets, std=1e-2, l1=0.0):
    cfg = LofitConfig(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=std, l1_lambda=l1)
    return kind(cfg, info.to_dict(), generator=torch.Generator().manual_seed(0))


def _params(inter) -> list[torch.Tensor]:
    return [p.detach().clone() for p in inter.parameters()]


@pytest.mark.parametrize("case", ["sft-offsets", "sft-scaling-l1", "dpo-offsets", "sft-text-rows"])
def test_accumulated_step_in_one_process_equals_the_plain_step(tiny, tiny_examples, case):
    """Two micro-batches of 4 in one process (the data-parallel / accumulation path: summed losses divided by the
    batch's answer-token count for SFT, its pair count for DPO, the regulariser's gradient added once) give the plain
    8-row step's losses and parameters. Answers of 1 or 2 tokens make the token count differ from the row count;
    text rows (a one-token prompt, BOS, then every token is an answer token) put an answer label at position 1."""
    model, info = tiny
    if case == "sft-text-rows":
        examples = [Example(e.prompt_ids[:1], e.prompt_ids[1:1 + 2 + i % 3]) for i, e in enumerate(tiny_examples)]
    else:
        examples = [Example(e.prompt_ids, (7,) if i % 3 else (7, 11), rejected_ids=(9,) if "dpo" in case else None)
                    for i, e in enumerate(tiny_examples)]
    kind, l1 = (LofitScaling, 1e-2) if "l1" in case else (LofitOffsets, 0.0)
    loss = "dpo" if "dpo" in case else "sft"
    runs = []
    for accumulation in (1, 2):
        inter = _lofit(info, kind, l1=l1)
        res = fit(model, inter, examples, _cfg(max_steps=3, loss=loss, gradient_accumulation_steps=accumulation))
        runs.append((res.losses, _params(inter)))
    (plain_losses, plain_params), (acc_losses, acc_params) = runs
    assert acc_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-7)
    for a, b in zip(acc_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(float((p - q).abs().max()) > 1e-4 for p, q in zip(plain_params, _params(_lofit(info, kind, l1=l1))))


def test_model_weights_frozen_before_fit_stay_frozen(tiny, tiny_examples):
    """fit() freezes the model's trainable weights for the run and gives them back; a weight the caller had frozen
    (``requires_grad=False``) is still frozen afterwards, and the others are trainable again."""
    model, info = tiny
    embed = model.get_input_embeddings().weight
    embed.requires_grad_(False)
    try:
        fit(model, _lofit(info), tiny_examples, _cfg(max_steps=1))
        assert embed.requires_grad is False
        assert all(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" not in n)
    finally:
        embed.requires_grad_(True)


def test_only_interventions_whose_parameters_live_outside_the_model_are_moved(tiny, tiny_examples, monkeypatch):
    """LoFiT's parameters are its own: fit() moves the intervention to the model's device. LoRA's are injected into
    the model by bind() (they stay on their layers' devices under a device map): it is never moved as a whole."""
    model, info = tiny
    for inter, expected in ((_lofit(info), [torch.device("cpu")]), (LoraIntervention(LoraMethodConfig(), info.to_dict()), [])):
        calls = []
        original = inter.to
        monkeypatch.setattr(inter, "to", lambda *a, _o=original, _c=calls, **k: (_c.append(a[0] if a else k), _o(*a, **k))[1])
        fit(model, inter, tiny_examples[:8], _cfg(max_steps=1))
        assert calls == expected, type(inter).__name__


def test_the_last_step_is_always_checkpointed(tiny, tiny_examples, tmp_path):
    """checkpoint_every_steps=2 over 3 steps: checkpoints at 2 and at the end (3), which is what a rerun resumes."""
    model, info = tiny
    fit(model, _lofit(info), tiny_examples, _cfg(max_steps=3, checkpoint_every_steps=2), out_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002", "step-000003"]


def test_rerunning_a_finished_run_runs_no_step(tiny, tiny_examples, tmp_path):
    """A rerun of a finished run resumes at its last step: no step runs, the losses are the stored ones and
    seconds_per_step is 0 (not a division by zero, not a made-up time)."""
    model, info = tiny
    first = fit(model, _lofit(info), tiny_examples, _cfg(max_steps=2, checkpoint_every_steps=1), out_dir=tmp_path)
    again = fit(model, _lofit(info), tiny_examples, _cfg(max_steps=2, checkpoint_every_steps=1), out_dir=tmp_path)
    assert again.resumed_from_step == 2 and again.losses == first.losses
    assert again.seconds_per_step == 0.0


def test_wall_time_is_inside_the_time_the_call_took(tiny, tiny_examples):
    """wall_time_s is a duration measured inside fit(): positive and no longer than a clock read around the call."""
    model, info = tiny
    t0 = time.perf_counter()
    res = fit(model, _lofit(info), tiny_examples, _cfg(max_steps=2))
    outer = time.perf_counter() - t0
    assert 0.0 < res.wall_time_s <= outer
    assert res.seconds_per_step == pytest.approx(res.wall_time_s / 2)


@pytest.mark.parametrize("n_examples,batch_size", [(7, 3), (5, 5), (3, 8)])
def test_batches_walk_epoch_wise_permutations(n_examples, batch_size):
    """Concatenated over steps, the batches are whole permutations of the examples, one per epoch (every example
    once before any repeats), whether a batch crosses an epoch's end or spans several epochs."""
    steps = 3 * n_examples
    flat = [i for step in range(steps) for i in batch_indices(n_examples, batch_size, 0, step)]
    assert all(len(batch_indices(n_examples, batch_size, 0, s)) == batch_size for s in range(steps))
    for epoch in range(len(flat) // n_examples):
        assert sorted(flat[epoch * n_examples:(epoch + 1) * n_examples]) == list(range(n_examples)), epoch


def test_progress_bar_only_when_asked(tiny, tiny_examples, capsys):
    """progress=True shows a "train <method>" bar on stderr; progress=False shows nothing."""
    model, info = tiny
    fit(model, _lofit(info), tiny_examples[:8], _cfg(max_steps=1, progress=True))
    shown = capsys.readouterr().err
    fit(model, _lofit(info), tiny_examples[:8], _cfg(max_steps=1, progress=False))
    hidden = capsys.readouterr().err
    assert "train lofit" in shown
    assert "train" not in hidden


def test_a_non_finite_loss_is_named_as_the_loss(tiny, tiny_examples):
    """A NaN offset makes the step-0 loss NaN: the error names the loss and its value, and the step."""
    model, info = tiny
    inter = _lofit(info)
    with torch.no_grad():
        inter.offsets[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"^loss became non-finite \(nan\) at step 0"):
        fit(model, inter, tiny_examples, _cfg(max_steps=2))
