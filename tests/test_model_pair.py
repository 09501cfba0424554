"""ModelPair on tiny random Llamas: shapes and tokenizers are checked, a fine-tuned copy is read beside its base."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_tiny
from workbench.errors import MismatchError
from workbench.pair import ModelPair

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_model_pair_refuses_mismatched_shapes():
    base, info = make_tiny()
    wide, wide_info = make_tiny(hidden_size=32)
    with pytest.raises(MismatchError, match="d_model 16 vs 32"):
        ModelPair(base, wide, None, info, wide_info)


class _Vocab:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return self.vocab


def test_model_pair_refuses_other_tokenizer():
    base, info = make_tiny()
    with pytest.raises(MismatchError, match="different vocabularies"):
        ModelPair(base, copy.deepcopy(base), _Vocab({"a": 0}), info, info, tuned_tokenizer=_Vocab({"b": 0}))


def test_model_pair_accepts_a_finetuned_copy():
    base, info = make_tiny()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.lm_head.weight.add_(0.1)
    pair = ModelPair(base, tuned, _Vocab({"a": 0}), info, info, tuned_tokenizer=_Vocab({"a": 0}))
    b, t = pair.logits(IDS)
    assert torch.equal(b, logits(base)) and torch.equal(t, logits(tuned)) and not torch.equal(b, t)
