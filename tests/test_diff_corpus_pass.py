"""The streaming pass (probes/diff/corpus.py) against independent references: the tokenizer's own ids, plain
unpadded transformers forwards of the tiny random models of tests/conftest.py (app.latency.tiny), and the defaults
the ``workbench diff`` help text states. These tests also kill mutants found by studies/benchmarks/mutation.py
(the BOS rule of ``token_rows``, the pad id of a tokenizer without a pad token, the documented defaults)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import bos_adding, raw_ids

from probes.diff import DiffSettings, diff_corpus, token_rows

TEXTS = ["Paris is the capital of France.", "Hello", "The apple is in Box F, the key is in Box C.", "Hello world."]


def test_token_rows_put_bos_first_only_when_asked_and_truncate_with_it(tiny_pair):
    """``prepend_bos``: the tokenizer's BOS, then the text's own ids, cut to ``max_length`` tokens BOS included;
    without it the text's ids alone; a tokenizer without a BOS adds nothing; texts without tokens are skipped."""
    tok = tiny_pair.tokenizer
    assert tok.bos_token_id is not None
    raw = [raw_ids(tok, t) for t in TEXTS]
    assert list(token_rows(TEXTS + [""], tok, 6, prepend_bos=True)) == [([tok.bos_token_id] + r)[:6] for r in raw]
    assert list(token_rows(TEXTS, tok, 6, prepend_bos=False)) == [r[:6] for r in raw]
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None
    assert list(token_rows(TEXTS, no_bos, 100, prepend_bos=True)) == raw


def test_token_rows_of_a_bos_adding_tokenizer_add_no_special_tokens(tiny_pair):
    """A tokenizer that adds its BOS by itself (as Llama's does) still gives each text's plain ids, and the BOS
    exactly once with ``prepend_bos``: BOS is the caller's choice, never the tokenizer's."""
    tok = tiny_pair.tokenizer
    adds = bos_adding(tok)
    raw = [raw_ids(tok, t) for t in TEXTS]
    assert adds(TEXTS[0])["input_ids"] == [tok.bos_token_id] + raw[0]
    assert list(token_rows(TEXTS, adds, 100, prepend_bos=False)) == raw
    assert list(token_rows(TEXTS, adds, 100, prepend_bos=True)) == [[tok.bos_token_id] + r for r in raw]


@torch.no_grad()
def _plain_kl_and_nll(tiny_pair, texts):
    """Mean per-token KL(P_tuned ‖ P_base) over every real position and each model's mean next-token NLL over the
    positions that have a next token, from one unpadded forward of each model per row."""
    kls, nll_b, nll_t, n_next = [], 0.0, 0.0, 0
    for text in texts:
        ids = ([tiny_pair.tokenizer.bos_token_id] if tiny_pair.prepend_bos else []) + raw_ids(tiny_pair.tokenizer, text)
        x = torch.tensor([ids])
        lb = tiny_pair.base(input_ids=x).logits[0].float().log_softmax(-1)
        with tiny_pair.tuned_context():
            lt = tiny_pair.tuned(input_ids=x).logits[0].float().log_softmax(-1)
        kls.append(F.kl_div(lb, lt, log_target=True, reduction="none").sum(-1))
        nll_b += float(F.cross_entropy(lb[:-1], x[0, 1:], reduction="sum"))
        nll_t += float(F.cross_entropy(lt[:-1], x[0, 1:], reduction="sum"))
        n_next += len(ids) - 1
    return float(torch.cat(kls).mean()), nll_b / n_next, nll_t / n_next


def test_a_tokenizer_without_pad_token_still_pads_and_matches_unpadded_forwards(tiny_pair):
    """With no pad token (``pad_token_id is None``) the rows of a batch are still padded and masked: the KL and
    each model's NLL equal plain unpadded forwards, row by row (logits reduced in chunks of 3 positions, so chunks
    cross rows and the last one is partial)."""
    p = copy.copy(tiny_pair)
    p.tokenizer = copy.deepcopy(tiny_pair.tokenizer)
    p.tokenizer.pad_token = None
    assert p.tokenizer.pad_token_id is None
    got = diff_corpus(p, TEXTS, DiffSettings(batch_size=4, lens_token_stride=1, chunk_positions=3)).metrics
    kl, nll_b, nll_t = _plain_kl_and_nll(tiny_pair, TEXTS)
    assert got["n_batches"] == 1 and got["kl"]["mean_per_token"] == pytest.approx(kl, rel=1e-4)
    assert got["nll"]["base_nats_per_token"] == pytest.approx(nll_b, rel=1e-5)
    assert got["nll"]["tuned_nats_per_token"] == pytest.approx(nll_t, rel=1e-5)


def test_by_default_the_lens_reads_every_128th_real_token(tiny_pair):
    """README: the logit lens reads every 128th real token. Two rows of 96 tokens (one batch of 192 real tokens) are
    read at their 64th and 192nd tokens: 2 positions per model."""
    text = "the" + " the" * 95
    rows = list(token_rows([text, text], tiny_pair.tokenizer, 128, tiny_pair.prepend_bos))
    assert sum(map(len, rows)) == 192
    got = diff_corpus(tiny_pair, [text, text]).metrics["logit_lens"]
    assert got["base"]["n_positions"] == got["tuned"]["n_positions"] == len(range(63, 192, 128)) == 2


def _help_default(option) -> int:
    """The number in an option's ``(default N)`` help text."""
    found = re.search(r"\(default (\d+)\)", option.help)
    assert found, option.help
    return int(found.group(1))


def test_the_cli_help_states_the_defaults_the_diff_really_uses():
    """``workbench diff --help`` states the defaults of ``--batch-size``, ``--max-rows`` and ``--max-length``; they are
    the defaults the streaming pass and its config really have."""
    from app.cli import diff_command
    from studies.dataset_diff import ModelDiffConfig

    options = inspect.signature(diff_command).parameters
    fields = {f.name: f.default for f in dataclasses.fields(ModelDiffConfig)}
    for name in ("batch_size", "max_length"):
        assert _help_default(options[name].default) == getattr(DiffSettings(), name) == fields[name]
    assert _help_default(options["max_rows"].default) == fields["max_rows"]
