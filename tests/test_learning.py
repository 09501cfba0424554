"""Learning is shown on the real model (issues 17 item 1, 26 item 6): every registered method, trained briefly through
``finetune`` on entity tracking (an answer that varies with the prompt) with two training seeds, raises held-out
top-1 accuracy, accuracy among the prompt's objects and the logit difference well above the base model's in both
seeds; and a negative control — the same LoRA run on answers drawn at random from each prompt's own objects, which
keeps the answer format and removes the binding — gains nothing.

One SmolLM2-135M-Instruct is shared by the whole module: every method leaves the base weights untouched
outside ``attach``, except that a LoRA adapter (also CAFT's inner LoRA) binds to the model it is first
attached to, so those two train on a deep copy per run.

Measured on SmolLM2-135M-Instruct, fp32, 2-core CPU (this repository's dev VM), entity tracking with 3 boxes,
n_train 64, n_heldout 32, task seed 0. Base: top-1 accuracy 0.219, accuracy_among_objects 0.25, logit difference
-2.01 nats (fixed). Gain over the base, training seed 0 / seed 1, as top-1 accuracy, accuracy among objects
[logit difference, nats]:

- lofit (27 random heads, 30 steps, lr 2e-2): 0.469 / 0.531, 0.438 / 0.500 [3.81 / 3.21]; ~27 s training per seed
- full  (5 steps, lr 1e-4):                   0.344 / 0.406, 0.312 / 0.375 [3.26 / 2.79]; ~15 s
- lora  (r 4, 20 steps, lr 3e-3):             0.750 / 0.719, 0.719 / 0.688 [14.2 / 9.72]; ~19 s
- neft  (random 1 % neurons, 30 steps, 3e-3): 0.656 / 0.656, 0.625 / 0.625 [9.53 / 7.42]; ~32 s
- caft  (2 random dirs at layer 12, inner LoRA r 4, 20 steps, 3e-3): 0.781 / 0.688, 0.750 / 0.656 [11.5 / 6.45]; ~22 s
- control (lora, seed 0, answers random among the prompt's objects): 0.000, -0.031 [-0.44]

(A permutation of the answers across prompts, the other usual shuffle, is a weaker control: it teaches answering
with objects absent from the prompt, measured top-1 -0.219, among objects +0.031, logit difference +0.73 nats from
flattening the three objects' logits.) Smallest gains of the real runs: top-1 0.344, among objects 0.312 (full,
seed 0), logit difference 2.79 nats (full, seed 1). The asserted minima (0.2, 0.2, 1.5 nats) sit below every
measured gain, and 0.2 is 2.5× the sampling noise of an accuracy on 32 prompts (SE ≈ 0.08); the control must stay
below 0.1, 0.1 and 0.75 nats, halfway between its measured values and those minima. Two seeds add ~2 minutes of
training to the suite (the whole module trains ~4 minutes on 2 free cores).
"""

from __future__ import annotations

import copy

import pytest
import torch

from workbench.data import Example
from workbench.finetune import finetune
from workbench.methods import available_methods

pytestmark = pytest.mark.real

N_TRAIN, N_HELDOUT, TASK_SEED, TRAIN_SEEDS = 64, 32, 0, (0, 1)
#: Per method: (method config, train config). Budgets are small (see the module docstring for their times).
SETTINGS: dict[str, tuple[dict | None, dict]] = {
    "lofit": ({"top_k_heads": 27, "head_selection": "random"}, {"max_steps": 30, "lr": 2e-2}),
    "full": ({}, {"max_steps": 5, "lr": 1e-4}),
    "lora": ({"r": 4, "alpha": 8}, {"max_steps": 20, "lr": 3e-3}),
    "neft": ({"selection": "random", "budget_fraction": 0.01}, {"max_steps": 30, "lr": 3e-3}),
    "caft": (None, {"max_steps": 20, "lr": 3e-3}),  # random directions at layer 12, inner LoRA r=4 (built below)
}
#: Minimum gain over the base model on the held-out split, in every training seed (module docstring: measured values).
MIN_GAIN = {"accuracy": 0.2, "accuracy_among_objects": 0.2, "logit_difference": 1.5}
#: The negative control's gain must stay below these.
MAX_CONTROL_GAIN = {"accuracy": 0.1, "accuracy_among_objects": 0.1, "logit_difference": 0.75}


@pytest.fixture(scope="module")
def setup(smollm2):
    from workbench.tasks import get_task

    model, tok, info = smollm2  # shared with the whole run (conftest.py): each test must leave it unchanged (checked)
    task = get_task("entity_tracking")
    split = task.generate(tok, task.config(n_train=N_TRAIN, n_heldout=N_HELDOUT, seed=TASK_SEED), prepend_bos=info.prepend_bos)
    base = task.evaluate(model, split)
    return model, info, task, split, base


def _caft_config(info, tmp_path) -> dict:
    from workbench.methods.caft import (
        CaftIntervention,
        random_directions,
        save_directions,
    )

    dims = info.to_dict()
    ablation = CaftIntervention.from_directions({12: random_directions(dims["d_model"], 2, seed=0)}, dims, source="random")
    return {**save_directions(ablation, tmp_path / "dirs.safetensors"), "inner": "lora", "inner_config": {"r": 4, "alpha": 8}}


def _gain(setup, method: str, seed: int, examples, tmp_path) -> dict[str, float]:
    """Train ``method`` with training seed ``seed``; its held-out metrics minus the base model's."""
    model, info, task, split, base = setup
    config, train = SETTINGS[method]
    if method == "caft":
        config = _caft_config(info, tmp_path)
    target = copy.deepcopy(model) if method in ("lora", "caft") else model  # a LoRA binds to its first model
    result = finetune(method, target, info, examples, config=config, train={**train, "seed": seed, "progress": False})
    with (result.details.get("evaluate_with") or result.intervention).attach(target):
        tuned = task.evaluate(target, split)
    del target
    return {k: tuned[k] - base[k] for k in MIN_GAIN}


def test_every_method_is_covered():
    assert set(SETTINGS) == set(available_methods())


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_method_learns_entity_tracking_in_every_seed(setup, method, tmp_path):
    """Tuned − base held-out top-1 accuracy ≥ 0.2, accuracy_among_objects ≥ 0.2 and logit difference ≥ +1.5 nats,
    for the smaller of the two training seeds' gains (measured values: module docstring)."""
    _, _, task, split, base = setup
    gains = [_gain(setup, method, seed, task.to_examples(split), tmp_path) for seed in TRAIN_SEEDS]
    for metric, floor in MIN_GAIN.items():
        assert min(g[metric] for g in gains) >= floor, (method, metric, gains, base)


def test_training_on_answers_unrelated_to_the_binding_gains_nothing(setup, tmp_path):
    """Negative control: LoRA (the strongest learner here) on the same prompts, each answered by one of its own three
    objects drawn at random — the right format, no binding — stays below 0.1 / 0.1 / 0.75 nats of gain."""
    _, _, task, split, base = setup
    g = torch.Generator().manual_seed(0)
    examples = [Example(p.input_ids, (p.object_token_ids[int(torch.randint(len(p.object_token_ids), (1,), generator=g))],))
                for p in split.train]
    true = task.to_examples(split)
    assert [e.prompt_ids for e in examples] == [e.prompt_ids for e in true]
    assert sum(e.answer_ids != t.answer_ids for e, t in zip(examples, true)) >= len(true) // 2  # most answers changed
    gain = _gain(setup, "lora", TRAIN_SEEDS[0], examples, tmp_path)
    for metric, ceiling in MAX_CONTROL_GAIN.items():
        assert gain[metric] < ceiling, (metric, gain, base)
