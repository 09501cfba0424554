"""Streaming top-k logit lens: final norm + unembedding + soft-cap + log-softmax statistics + top-k, per chunk.

The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens") reads each row ``x`` (one layer's
``hook_resid_post`` at one position) as ``softmax(softcap(W_U · norm(x)))``. The reference
(:func:`probes.logit_lens.full_logit_lens`) materialises ``[rows, d_vocab]`` probabilities; this kernel never
holds more than ``rows_per_chunk × vocab_per_chunk`` logits and never writes a softmax at all: each chunk's
logits give their top-k and their log-sum-exp, and a probability is ``exp(logit − logsumexp)`` of the few logits
kept (the running max / log-sum-exp trick of online softmax, Milakov & Gimelshein 2018, "Online normalizer
calculation for softmax", when the vocabulary is chunked too).

What it buys on a CPU (``studies/benchmarks/kernels.py``, table in ``kernels/README.md``): the reference's CPU
time at about 1/100 of its memory, and less CPU than a softmax per row chunk (which writes and re-reads a second
``[rows, d_vocab]`` array). Here a ``[rows_per_chunk, vocab_per_chunk]`` tile of logits (16 MB by default) is read by
``topk`` and then turned in place into its ``Σ exp``. Tiles of few rows lose: each re-reads the whole unembedding.
The unembedding matmul, the floor, runs in the weight's dtype as in the model.

On CUDA with Triton importable, :func:`lens_topk` hands the whole computation to
:func:`workbench_kernels.triton_lens.lens_topk_triton` when ``use_triton`` is true (see that module).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.architecture import softcap
from workbench_kernels.paths import choose

#: Default tile: among the fastest measured on SmolLM2 (49k vocabulary, CPU); the sweep is in ``kernels/README.md``.
ROWS_PER_CHUNK, VOCAB_PER_CHUNK = 1024, 4096


@torch.no_grad()
def lens_topk(norm: Callable[[Tensor], Tensor], head: nn.Linear, rows: Float[Tensor, "rows d_model"], *, k: int = 1,
              target: Int[Tensor, " rows"] | None = None, cap: float | None = None, rows_per_chunk: int = ROWS_PER_CHUNK,
              vocab_per_chunk: int | None = VOCAB_PER_CHUNK, use_triton: bool = False
              ) -> tuple[Int[Tensor, "rows k"], Float[Tensor, "rows k"], Float[Tensor, " rows"] | None]:
    """Top-k token ids and probabilities of the lens ``softmax(softcap(head(norm(rows)), cap))`` per row.

    Args:
        norm: the model's final norm (a module or function, applied to rows cast to ``head.weight.dtype``).
        head: the unembedding (``lm_head``: ``weight`` ``[d_vocab, d_model]``, optional ``bias``); called as a module
            when one chunk spans the whole vocabulary (its hooks fire), else its weight is sliced per chunk.
        rows: residual-stream rows, on ``head``'s device.
        k: how many tokens per row (clamped to ``d_vocab``).
        target: one token id per row whose probability is also returned (``None``: none).
        cap: the final-logit soft-cap (Gemma 2), ``None`` for none.
        rows_per_chunk: rows per matmul; extra memory ≈ one ``[rows_per_chunk, vocab_per_chunk]`` fp32 array.
        vocab_per_chunk: vocabulary columns per matmul (``None``: the whole vocabulary at once); the top-k and
            log-sum-exp are merged across chunks exactly.
        use_triton: on CUDA with Triton importable (and no bias, ``k ≤ 16``), run
            :func:`workbench_kernels.triton_lens.lens_topk_triton` instead (the chunk sizes are then ignored).
            Otherwise the torch path runs and the reason is logged once (:func:`workbench_kernels.choose`;
            :func:`workbench_kernels.path_taken` ``("logit_lens")`` says which path ran).

    Returns:
        ``(ids [rows, k] int64, probs [rows, k] fp32, target_prob [rows] fp32 or None)``, on ``rows``' device,
        ids most likely first. Probabilities are exact to fp32 rounding (no softmax is materialised).

    Raises:
        ValueError: ``rows_per_chunk``, ``vocab_per_chunk`` or ``k`` < 1.
    """
    if rows_per_chunk < 1 or (vocab_per_chunk is not None and vocab_per_chunk < 1) or k < 1:
        raise ValueError(f"rows_per_chunk={rows_per_chunk}, vocab_per_chunk={vocab_per_chunk} and k={k} must be >= 1")
    weight, bias = head.weight, head.bias
    if use_triton:
        from workbench_kernels import triton_lens

        why = ("rows are not on a CUDA device" if not rows.is_cuda else "triton is not importable" if not triton_lens.available()
               else "the unembedding has a bias" if bias is not None else f"k={k} > {triton_lens.MAX_K}" if k > triton_lens.MAX_K else "")
        if not why:
            choose("logit_lens", "triton")
            return triton_lens.lens_topk_triton(norm(rows.to(weight.dtype)), weight, k=k, target=target, cap=cap)
        choose("logit_lens", "streaming", f"Triton lens asked for but {why}")
    else:
        choose("logit_lens", "streaming")
    n_rows, d_vocab = rows.shape[0], weight.shape[0]
    kk = min(k, d_vocab)
    vc = d_vocab if vocab_per_chunk is None else min(vocab_per_chunk, d_vocab)
    ids = torch.empty(n_rows, kk, dtype=torch.long, device=rows.device)
    probs = torch.empty(n_rows, kk, dtype=torch.float32, device=rows.device)
    tprob = None if target is None else torch.empty(n_rows, dtype=torch.float32, device=rows.device)
    for r0 in range(0, n_rows, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, n_rows)
        x = norm(rows[r0:r1].to(weight.dtype))
        t = None if target is None else target[r0:r1].to(rows.device)
        top_v = top_i = lse = t_logit = None
        for v0 in range(0, d_vocab, vc):
            v1 = min(v0 + vc, d_vocab)
            logits = head(x) if vc == d_vocab else F.linear(x, weight[v0:v1], None if bias is None else bias[v0:v1])
            logits = softcap(logits.float(), cap)
            tv, ti = logits.topk(min(kk, v1 - v0), dim=-1)
            if t is not None:
                inside = (t >= v0) & (t < v1)
                picked = logits.gather(-1, (t - v0).clamp(0, v1 - v0 - 1)[:, None])[:, 0]
                t_logit = torch.where(inside, picked, picked.new_full((), float("nan")) if t_logit is None else t_logit)
            # log-sum-exp in place on the chunk (its max is the top-1 just found): one pass, no second array
            chunk_lse = tv[:, 0] + logits.sub_(tv[:, :1]).exp_().sum(-1).log()
            if top_v is None:
                top_v, top_i, lse = tv, ti + v0, chunk_lse
            else:  # merge the running top-k with this chunk's, and the log-sum-exps
                cand_v, cand_i = torch.cat([top_v, tv], -1), torch.cat([top_i, ti + v0], -1)
                top_v, pos = cand_v.topk(min(kk, cand_v.shape[-1]), dim=-1)
                top_i = cand_i.gather(-1, pos)
                lse = torch.logaddexp(lse, chunk_lse)
            del logits
        ids[r0:r1] = top_i
        probs[r0:r1] = (top_v - lse[:, None]).exp()
        if tprob is not None:
            tprob[r0:r1] = (t_logit - lse).exp()
    return ids, probs, tprob
