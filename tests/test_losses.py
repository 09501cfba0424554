"""Training losses computed from only the logits that predict answer tokens equal the losses on the full logits."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import make_tiny
from workbench.data import Example, collate
from workbench.losses import answer_logits, answer_logprob, answer_loss, sft_loss

EXAMPLES = [Example((5, 6, 7), (8,)), Example((9, 10, 11, 12, 13, 14), (15, 16, 17)), Example((3, 4), (20, 21))]


class _NoKeep(nn.Module):
    """A model whose forward does not take ``logits_to_keep`` (the fallback path)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def _grads(model: nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return {"loss": loss.detach(), **{n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


def test_sft_loss_equals_answer_loss_on_full_logits_with_gradients():
    model, _ = make_tiny(2)
    ids, mask, labels = collate(EXAMPLES, pad_id=0)
    full = _grads(model, lambda: answer_loss(model(input_ids=ids, attention_mask=mask).logits, labels))
    kept = _grads(model, lambda: sft_loss(model, ids, mask, labels))
    assert full.keys() == kept.keys() and len(full) > 5
    for name in full:
        torch.testing.assert_close(kept[name], full[name], rtol=1e-5, atol=1e-6, msg=name)
    logits, target = answer_logits(model, ids, mask, labels)
    assert logits.shape[1] == target.shape[1] < ids.shape[1] - 1  # fewer positions through the unembedding
    summed = sft_loss(model, ids, mask, labels, reduction="sum")
    torch.testing.assert_close(summed, full["loss"] * int((labels[:, 1:] != -100).sum()))


def test_answer_logprob_and_the_fallback_without_logits_to_keep():
    model, _ = make_tiny(3)
    ids, mask, labels = collate(EXAMPLES, pad_id=0)
    with torch.no_grad():
        reference = answer_logprob(model(input_ids=ids, attention_mask=mask).logits, labels)
        for m in (model, _NoKeep(model)):
            logits, target = answer_logits(m, ids, mask, labels)
            logp = logits.float().log_softmax(-1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
            torch.testing.assert_close((logp * (target != -100)).sum(-1), reference)
    full_positions = answer_logits(_NoKeep(model), ids, mask, labels)[0].shape[1]
    assert full_positions == ids.shape[1] - 1
