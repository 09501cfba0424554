"""The one data layer (workbench.data): right_pad, collate, last_index, final_position_logits.

Expected tensors are written out by hand; final_position_logits is checked against unpadded single-sequence
forward passes of the tiny model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workbench.data import Example, collate, final_position_logits, last_index, right_pad
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_right_pad_hand_built():
    ids, mask, last = right_pad([[5, 6, 7], [8], (9, 10)], pad_id=0)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(last, torch.tensor([2, 0, 1]))
    assert ids.dtype == mask.dtype == last.dtype == torch.long
    ids, mask, last = right_pad([[4], [1, 2]], pad_id=63)
    assert torch.equal(ids, torch.tensor([[4, 63], [1, 2]]))
    assert torch.equal(mask, torch.tensor([[1, 0], [1, 1]])) and torch.equal(last, torch.tensor([0, 1]))


@pytest.mark.parametrize("seqs", [[], [[1, 2], []], [()]])
def test_right_pad_refuses_empty(seqs):
    with pytest.raises(ConfigError, match="no empty sequence"):
        right_pad(seqs, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=7), min_size=1, max_size=6), st.integers(-5, 5))
def test_right_pad_property(seqs, pad_id):
    ids, mask, last = right_pad(seqs, pad_id)
    assert ids.shape == mask.shape == (len(seqs), max(map(len, seqs)))
    for i, s in enumerate(seqs):
        assert ids[i, : len(s)].tolist() == s and set(ids[i, len(s):].tolist()) <= {pad_id}
        assert mask[i].tolist() == [1] * len(s) + [0] * (ids.shape[1] - len(s)) and int(last[i]) == len(s) - 1


def test_collate_hand_built():
    examples = [Example((5, 6), (7,)), Example((8,), (9, 10, 11)), Example((1, 2, 3), ())]
    ids, mask, labels = collate(examples, pad_id=0)
    assert torch.equal(ids, torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11], [1, 2, 3, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]))
    assert torch.equal(labels, torch.tensor([[-100, -100, 7, -100], [-100, 9, 10, 11], [-100, -100, -100, -100]]))


def test_collate_pad_id_never_leaks_into_labels():
    ids, mask, labels = collate([Example((3,), (4,)), Example((3, 3, 3), (4,))], pad_id=4)  # pad = the answer token
    assert torch.equal(ids, torch.tensor([[3, 4, 4, 4], [3, 3, 3, 4]]))
    assert torch.equal(labels, torch.tensor([[-100, 4, -100, -100], [-100, -100, -100, 4]]))
    with pytest.raises(ConfigError):
        collate([], 0)


def test_last_index_right_and_left_padding():
    assert last_index(torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])).tolist() == [1, 2, 0]
    assert last_index(torch.tensor([[0, 1, 1], [0, 0, 1]])).tolist() == [2, 2]
    with pytest.raises(ConfigError, match="no real token"):
        last_index(torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ConfigError, match=r"\[batch, pos\]"):
        last_index(torch.ones(3, dtype=torch.long))


class _NoLogitsToKeep(nn.Module):
    """The tiny model behind a forward() without ``logits_to_keep``: exercises the gather path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


SEQS = [[5, 9, 12, 3, 44], [7, 2], [30, 31, 32], [11, 2, 60, 4]]


@pytest.mark.parametrize("wrap", [False, True], ids=["logits_to_keep", "gather"])
def test_final_position_logits_equals_unpadded_forward(tiny, wrap):
    model = tiny[0]
    ids, mask, last = right_pad(SEQS, pad_id=0)
    with torch.no_grad():
        expected = torch.stack([model(input_ids=torch.tensor([s])).logits[0, -1] for s in SEQS])
        runner = _NoLogitsToKeep(model) if wrap else model
        got = final_position_logits(runner, ids, mask)
        given_last = final_position_logits(runner, ids, mask, last)
    assert got.shape == (len(SEQS), model.config.vocab_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(given_last, got, atol=0, rtol=0)


def test_final_position_logits_keeps_gradients_and_checks_shapes(tiny):
    model = tiny[0]
    ids, mask, _ = right_pad(SEQS[:2], pad_id=0)
    out = final_position_logits(model, ids, mask)
    out.sum().backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)
    with pytest.raises(ConfigError, match="differ in shape"):
        final_position_logits(model, ids, mask[:, :-1])
    with pytest.raises(ConfigError, match="last has shape"):
        final_position_logits(model, ids, mask, torch.tensor([0]))


def test_one_right_pad_implementation():
    """Right-padding is written once (workbench/data.py); everyone else calls it."""
    pattern = re.compile(r"torch\.full\(\(len\(|pad_sequence\(|\[i, : ?len\(")
    hits = [str(p.relative_to(ROOT)) for floor in ("workbench", "probes", "studies", "app")
            for p in (ROOT / floor).rglob("*.py") if pattern.search(p.read_text())]
    assert hits == ["workbench/data.py"], hits


def test_example_collate_and_config_reader_are_defined_once():
    import ast

    wanted = {"Example", "collate", "right_pad", "final_position_logits", "config_from_dict"}
    where: dict[str, list[str]] = {}
    for floor in ("workbench", "probes", "studies", "app"):
        for p in (ROOT / floor).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in wanted:
                    where.setdefault(node.name, []).append(str(p.relative_to(ROOT)))
    assert where == {"Example": ["workbench/data.py"], "collate": ["workbench/data.py"], "right_pad": ["workbench/data.py"],
                     "final_position_logits": ["workbench/data.py"], "config_from_dict": ["workbench/config.py"]}
