"""fp32 training against a reference written by hand (issue 26, item 7; replaces the pinned ``FP32_BEFORE`` numbers):
for LoFiT, NeFT, LoRA and full fine-tuning, ``fit()`` with the method's hooks trains what a plain PyTorch loop trains
when it writes the method's effect on the weights out by hand — the same AdamW, clipping at 1.0, the answer's
cross-entropy at the last prompt position — starting from the same initial values.

The reference shares nothing with the library but the tiny model and the initial parameter values: the weights it
runs are ``W + Δ`` (full), ``W + (α/r)·B·A`` (LoRA), ``W_gate[i] + d_gate``, ``W_up[i] + d_up``, ``W_down[:, i] + d_down``
(NeFT), given to ``torch.func.functional_call``, and LoFiT's offsets are added to each selected head's slice of
``o_proj``'s input by a pre-hook written here. Every step sees all 32 examples (batch size = data size), so no batch
sampler is involved either.

Tolerances: per-step losses within 2e-6 relative, final logits within 2e-6 absolute (|logits| ≤ 1). The reference
sums the weights before the matmul while the hooks add the products after it (and averages the batch in another
order), so agreement is up to float32 rounding, not bitwise: measured ≤ 1.2e-7 relative on the losses and ≤ 1.8e-7
absolute on the logits over 4 steps, against a training effect of 0.27-0.84 on the logits.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.func import functional_call

from conftest import make_tiny
from workbench.methods import get_method
from workbench.train import TrainConfig, fit

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])
STEPS = 4
#: method -> (config of an intervention with fixed heads / neurons, learning rate)
CASES = {
    "lofit": (dict(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=0.1), 5e-2),
    "neft": (dict(neurons=[[0, 3], [1, 17], [1, 30]], init_std=0.1), 5e-2),
    "lora": (dict(r=4, alpha=8.0), 2e-2),
    "full": (dict(), 1e-2),
}


def _weights(name: str, model, config: dict, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights with the method's trainable tensors ``p`` (named as in its state dict) written in."""
    w = dict(model.named_parameters())
    if name == "full":  # deltas.model__layers__0__mlp__up_proj__weight -> model.layers.0.mlp.up_proj.weight
        return {k.removeprefix("deltas.").replace("__", "."): w[k.removeprefix("deltas.").replace("__", ".")] + v for k, v in p.items()}
    if name == "lora":  # adapters.<module>__lora_A__workbench__weight, ...__lora_B__... -> <module>.weight + (α/r) B A
        out = {}
        for k in p:
            if "__lora_A__" in k:
                module = k.removeprefix("adapters.").split("__lora_A__")[0].replace("__", ".")
                b = p[k.replace("__lora_A__", "__lora_B__")]
                out[f"{module}.weight"] = w[f"{module}.weight"] + config["alpha"] / config["r"] * (b @ p[k])
        return out
    if name == "neft":  # neuron (l, i): row i of gate and up, column i of down
        out = {}
        for r, (layer, i) in enumerate(config["neurons"]):
            pre = f"model.layers.{layer}.mlp."
            for proj, dim, delta in (("gate_proj", 0, p["d_gate"][r]), ("up_proj", 0, p["d_up"][r]), ("down_proj", 1, p["d_down"][r])):
                key = f"{pre}{proj}.weight"
                onehot = torch.zeros(w[key].shape[dim]).index_fill(0, torch.tensor([i]), 1.0)
                add = onehot[:, None] * delta[None, :] if dim == 0 else delta[:, None] * onehot[None, :]
                out[key] = out.get(key, w[key]) + add
        return out
    return {}


@contextlib.contextmanager
def _lofit_offsets(model, config: dict, offsets: torch.Tensor):
    """z_h += v_h on each selected head: a pre-hook on o_proj, whose input is the heads' outputs side by side."""
    d_head = model.config.hidden_size // model.config.num_attention_heads
    handles = []
    for row, (layer, head) in enumerate(config["heads"]):
        def hook(_mod, args, row=row, head=head):
            z = args[0]
            add = torch.zeros(z.shape[-1], dtype=z.dtype)
            add = add.index_put((torch.arange(head * d_head, (head + 1) * d_head),), offsets[row])
            return (z + add,)
        handles.append(model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _forward(name: str, model, config: dict, p: dict, ids: torch.Tensor) -> torch.Tensor:
    hooks = _lofit_offsets(model, config, p["offsets"]) if name == "lofit" else contextlib.nullcontext()
    with hooks:
        return functional_call(model, _weights(name, model, config, p), (ids,)).logits


def _by_hand(name: str, config: dict, init: dict[str, torch.Tensor], examples, lr: float) -> tuple[list[float], torch.Tensor]:
    model, _ = make_tiny(0)
    model.requires_grad_(False)
    p = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.AdamW(list(p.values()), lr=lr, weight_decay=0.0)
    ids = torch.tensor([e.prompt_ids for e in examples])
    target = torch.tensor([e.answer_ids[0] for e in examples])
    losses = []
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(_forward(name, model, config, p, ids)[:, -1], target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        return losses, _forward(name, model, config, p, IDS)


def test_every_method_with_parameters_is_covered():
    """CAFT trains another method under a fixed ablation (its own test: tests/test_caft.py)."""
    from workbench.methods import available_methods

    assert set(available_methods()) - {"caft"} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fp32_training_equals_a_loop_written_by_hand(name, tiny_examples):
    config, lr = CASES[name]
    assert all(len(e.prompt_ids) == 6 and len(e.answer_ids) == 1 for e in tiny_examples)  # the reference's assumption
    model, info = make_tiny(0)
    spec = get_method(name)
    inter = spec.intervention_cls(spec.config_cls(**config), info.to_dict())
    inter.bind(model)
    init = {k: v.detach().clone() for k, v in inter.state_dict().items()}
    assert init and all(v.dtype == torch.float32 for v in init.values())
    result = fit(model, inter, tiny_examples, TrainConfig(max_steps=STEPS, lr=lr, batch_size_prompts=len(tiny_examples), progress=False))
    with torch.no_grad(), inter.attach(model):
        logits = model(input_ids=IDS).logits
    hand_losses, hand_logits = _by_hand(name, config, init, tiny_examples, lr)
    assert hand_losses[-1] < hand_losses[0] - 0.01, hand_losses  # the reference trains at all
    assert result.losses == pytest.approx(hand_losses, rel=2e-6, abs=0)
    torch.testing.assert_close(logits, hand_logits, atol=2e-6, rtol=0)
    base, _ = make_tiny(0)
    with torch.no_grad():
        assert (logits - base(input_ids=IDS).logits).abs().max() > 1e-2  # trained away from the base model
