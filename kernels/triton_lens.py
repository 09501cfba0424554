"""Triton streaming top-k logit lens (CUDA only): unembedding tile + soft-cap + softmax statistics + top-k, fused.

One program computes a ``BLOCK_M × BLOCK_V`` tile of logits ``x @ W_Uᵀ`` in registers (fp32 accumulation of
``tl.dot``), soft-caps it, and writes only per-row statistics of the tile: its max, its ``Σ exp(logit − max)``
and its top-``K`` (value, id). The ``[rows, d_vocab]`` logits never reach GPU memory; a short torch reduction
merges the tiles (exact: online softmax, Milakov & Gimelshein 2018; top-k of the union of per-tile top-k).
The eager reference is :func:`workbench_kernels.logit_lens.lens_topk` (cuBLAS matmul, then ``topk`` and ``logsumexp``).

Triton is imported lazily: this module imports on a machine without Triton or CUDA, and :func:`available` says
whether the kernel can run. Whether it is kept is decided by ``studies/benchmarks/gpu_kernels.py`` (table in
``kernels/README.md``).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Largest ``k`` the kernel extracts per tile (an unrolled loop of max / argmax / mask per k).
MAX_K = 16


def available() -> bool:
    """True when a CUDA device is present and Triton is importable."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": 64}, num_warps=w, num_stages=s)
               for bm, bv, w, s in ((64, 128, 4, 3), (128, 128, 8, 3), (64, 256, 8, 3), (128, 64, 4, 4))]

    # restore_value: every trial config writes the same buffers, and a trial with a smaller BLOCK_V fills slots that
    # the chosen config leaves alone; they must be back at -inf / 0 before the real run.
    @triton.autotune(configs=configs, key=["M", "V", "D", "K"], restore_value=["tmax_ptr", "tsum_ptr", "topv_ptr", "topi_ptr"])
    @triton.jit
    def lens_tiles(x_ptr, w_ptr, tmax_ptr, tsum_ptr, topv_ptr, topi_ptr, M, V, D, n_tiles, cap,
                   HAS_CAP: tl.constexpr, K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_m, pid_v = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        dd = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            a = tl.load(x_ptr + rows[:, None] * D + (d0 + dd)[None, :],
                        mask=(rows[:, None] < M) & ((d0 + dd)[None, :] < D), other=0.0)
            b = tl.load(w_ptr + cols[:, None] * D + (d0 + dd)[None, :],
                        mask=(cols[:, None] < V) & ((d0 + dd)[None, :] < D), other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
        if HAS_CAP:  # cap · tanh(logit / cap), tanh(y) = 2 σ(2y) − 1
            acc = cap * (2.0 / (1.0 + tl.exp(-2.0 * acc / cap)) - 1.0)
        acc = tl.where(cols[None, :] < V, acc, float("-inf"))
        m = tl.max(acc, axis=1)
        s = tl.sum(tl.exp(acc - m[:, None]), axis=1)
        out = rows * n_tiles + pid_v
        tl.store(tmax_ptr + out, m, mask=rows < M)
        tl.store(tsum_ptr + out, s, mask=rows < M)
        local = tl.arange(0, BLOCK_V)
        for j in tl.static_range(K):
            v = tl.max(acc, axis=1)
            i = tl.argmax(acc, axis=1)
            tl.store(topv_ptr + out * K + j, v, mask=rows < M)
            tl.store(topi_ptr + out * K + j, pid_v * BLOCK_V + i, mask=rows < M)
            acc = tl.where(local[None, :] == i[:, None], float("-inf"), acc)

    return lens_tiles


@torch.no_grad()
def lens_topk_triton(normed: Float[Tensor, "rows d_model"], weight: Float[Tensor, "d_vocab d_model"], *, k: int = 1,
                     target: Int[Tensor, " rows"] | None = None, cap: float | None = None
                     ) -> tuple[Int[Tensor, "rows k"], Float[Tensor, "rows k"], Float[Tensor, " rows"] | None]:
    """The lens of already-normed rows: ``(ids, probs, target_prob)`` as :func:`workbench_kernels.logit_lens.lens_topk`.

    ``normed`` and ``weight`` are CUDA tensors of one dtype (bf16, fp16 or fp32; fp32 runs ``tl.dot`` in IEEE fp32,
    as torch's default matmul, not TF32).
    The target token's logit is recomputed as a row-wise dot product in fp32.

    Raises:
        RuntimeError: no CUDA device or no Triton (check :func:`available` first).
        ValueError: ``k`` outside ``[1, MAX_K]`` or mismatched shapes / dtypes.
    """
    if not available():
        raise RuntimeError("the Triton logit lens needs a CUDA device and triton")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k={k} must be in [1, {MAX_K}]")
    if normed.shape[-1] != weight.shape[-1] or normed.dtype != weight.dtype:
        raise ValueError(f"rows {tuple(normed.shape)} {normed.dtype} do not match W_U {tuple(weight.shape)} {weight.dtype}")
    x, w = normed.contiguous(), weight.contiguous()
    (m_rows, d), v = x.shape, w.shape[0]
    kk = min(k, v)
    kernel = _kernel()
    smallest_block_v = 64
    n_tiles = -(-v // smallest_block_v)  # upper bound; the real count depends on the autotuned BLOCK_V
    tmax = torch.full((m_rows, n_tiles), float("-inf"), device=x.device)
    tsum = torch.zeros(m_rows, n_tiles, device=x.device)
    topv = torch.full((m_rows, n_tiles, kk), float("-inf"), device=x.device)
    topi = torch.zeros(m_rows, n_tiles, kk, dtype=torch.int32, device=x.device)

    def grid(meta):
        return (-(-m_rows // meta["BLOCK_M"]), -(-v // meta["BLOCK_V"]))

    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 as torch's default matmul (no TF32)
    kernel[grid](x, w, tmax, tsum, topv, topi, m_rows, v, d, n_tiles, float(cap or 0.0), HAS_CAP=cap is not None, K=kk,
                 PRECISION=precision)
    big = tmax.max(-1, keepdim=True).values
    lse = big[:, 0] + (tsum * (tmax - big).exp()).sum(-1).log()
    val, pos = topv.flatten(1).topk(kk, dim=-1)
    ids = topi.flatten(1).gather(-1, pos).long()
    tprob = None
    if target is not None:
        t_logit = (x.float() * w[target.to(x.device)].float()).sum(-1)
        t_logit = t_logit if cap is None else cap * torch.tanh(t_logit / cap)
        tprob = (t_logit - lse).exp()
    return ids, (val - lse[:, None]).exp(), tprob
