"""kernels.logit_lens (streaming top-k lens) against the materialising reference, and the probes API on both paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench_kernels.logit_lens import lens_topk
from probes import logit_lens as probes_lens
from probes.logit_lens import chunked_logit_lens, full_logit_lens
from tests.conftest import make_tiny
from workbench.architecture import final_norm, unembedding


def _reference(norm, head, rows, k, target, cap):
    logits = head(norm(rows)).float()
    logits = cap * torch.tanh(logits / cap) if cap else logits
    p = logits.softmax(-1)
    top = p.topk(k, -1)
    return top.indices, top.values, p.gather(-1, target[:, None])[:, 0]


@pytest.mark.parametrize(("rows_per_chunk", "vocab_per_chunk"), [(1, None), (7, None), (64, None), (5, 10), (3, 64), (100, 13)])
@pytest.mark.parametrize("cap", [None, 2.0])
def test_kernel_equals_the_softmax_reference(rows_per_chunk, vocab_per_chunk, cap):
    model, info = make_tiny()
    norm, head = final_norm(model), unembedding(model)
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(23, info.d_model, generator=g) * 4
    target = torch.randint(0, info.d_vocab, (23,), generator=g)
    ids, probs, tprob = lens_topk(norm, head, rows, k=6, target=target, cap=cap, rows_per_chunk=rows_per_chunk,
                                  vocab_per_chunk=vocab_per_chunk)
    ref_ids, ref_probs, ref_t = _reference(norm, head, rows, 6, target, cap)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(probs, ref_probs)
    torch.testing.assert_close(tprob, ref_t)


def test_kernel_with_a_biased_head_and_k_above_the_vocabulary():
    torch.manual_seed(0)
    head = nn.Linear(8, 5, bias=True)
    norm = nn.LayerNorm(8)
    rows = torch.randn(4, 8)
    for vc in (None, 2):
        ids, probs, tprob = lens_topk(norm, head, rows, k=9, rows_per_chunk=3, vocab_per_chunk=vc)
        assert ids.shape == (4, 5) and tprob is None
        ref = head(norm(rows)).softmax(-1).sort(-1, descending=True)
        assert torch.equal(ids, ref.indices)
        torch.testing.assert_close(probs, ref.values)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4))


@pytest.mark.parametrize("bad", [{"rows_per_chunk": 0}, {"vocab_per_chunk": 0}, {"k": 0}])
def test_kernel_rejects_empty_chunks(bad):
    model, _ = make_tiny()
    with pytest.raises(ValueError, match="must be >= 1"):
        lens_topk(final_norm(model), unembedding(model), torch.zeros(2, 16), **bad)


def test_kernel_never_holds_more_than_one_chunk_of_logits():
    """Peak allocation (torch's CPU profiler) while the kernel runs: one ``[rows_per_chunk, d_vocab]`` fp32 array
    (the log-sum-exp runs in place on it), never one per row of the input."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    d_vocab, rows, chunk = 4096, torch.randn(512, 16), 16
    head = nn.Linear(16, d_vocab, bias=False)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        lens_topk(nn.LayerNorm(16), head, rows, k=3, target=torch.zeros(512, dtype=torch.long), rows_per_chunk=chunk)
    biggest = max(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert chunk * d_vocab * 4 <= biggest < 2 * chunk * d_vocab * 4


def test_probes_api_is_the_reference():
    """``chunked_logit_lens`` runs the streaming kernel (recorded as the path taken) and equals :func:`full_logit_lens`."""
    from workbench_kernels.paths import path_taken

    model, info = make_tiny()
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(info.n_layers, 9, info.d_model, generator=g) * 3
    target = torch.randint(0, info.d_vocab, (9,), generator=g)
    full = full_logit_lens(model, resid, target, k=4)
    for rows_per_chunk in (1, 5, 1000):
        got = chunked_logit_lens(model, resid, target, k=4, rows_per_chunk=rows_per_chunk)
        assert got.top_ids.shape == (info.n_layers, 9, 4) and got.top_ids.device.type == "cpu"
        assert torch.equal(got.top_ids, full.top_ids)
        torch.testing.assert_close(got.top_probs, full.top_probs)
        torch.testing.assert_close(got.target_prob, full.target_prob)
        assert path_taken("logit_lens") == "streaming"
    none = chunked_logit_lens(model, resid, None, k=2)
    assert none.target_prob is None and torch.equal(none.top_ids, full.top_ids[..., :2])
    empty = chunked_logit_lens(model, resid[:, :0], target[:0], k=2)
    assert empty.top_ids.shape == (info.n_layers, 0, 2) and empty.target_prob.shape == (info.n_layers, 0)


def test_probes_uses_the_kernel():
    assert probes_lens.lens_topk is lens_topk


@pytest.mark.real
def test_kernel_equals_the_reference_on_the_real_model(smollm2):
    model = smollm2[0]
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(model.config.num_hidden_layers, 6, model.config.hidden_size, generator=g) * 2
    target = torch.randint(0, model.config.vocab_size, (6,), generator=g)
    full = full_logit_lens(model, resid, target, k=5)
    got = chunked_logit_lens(model, resid, target, k=5, rows_per_chunk=64)
    assert torch.equal(got.top_ids, full.top_ids)
    torch.testing.assert_close(got.top_probs, full.top_probs)
    torch.testing.assert_close(got.target_prob, full.target_prob)
