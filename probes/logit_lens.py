"""Logit lens over every (layer, position) in chunks, with a streaming top-k: memory independent of positions.

For layer l and position p the logit lens reads ``softcap(unembed(final_norm(resid_post[l, p])))``, the
model's own readout applied as if the remaining layers were skipped (nostalgebraist 2020, "interpreting GPT:
the logit lens"). The full computation materialises ``[n_layers, pos, d_vocab]`` scores (1.5 GB in fp32 for
SmolLM2's 30 layers × 256 positions × 49152 tokens); :func:`chunked_logit_lens` never holds more than
``rows_per_chunk × d_vocab`` of them: each chunk of (layer, position) rows is unembedded, reduced to its
top-k tokens and probabilities (and the probability of a given target token), and dropped before the next.

The work is done by the streaming kernel :func:`workbench_kernels.logit_lens.lens_topk` (no softmax is
materialised; see ``kernels/README.md`` for its benchmark). :func:`full_logit_lens` is the unchunked reference (used by
the equality tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.architecture import final_norm, logit_softcap, softcap, unembedding

from workbench_kernels.logit_lens import lens_topk


@dataclass
class LensTopK:
    """The lens reduced per (layer, position).

    Attributes:
        top_ids: ``[n_layers, pos, k]`` the lens's top-k token ids, most likely first.
        top_probs: ``[n_layers, pos, k]`` their probabilities.
        target_prob: ``[n_layers, pos]`` the lens probability of the target token of each position (e.g.
            the model's final top-1), or ``None`` when no target was given.
    """

    top_ids: Tensor
    top_probs: Tensor
    target_prob: Tensor | None


def _readout(model: nn.Module):
    norm, head, cap = final_norm(model), unembedding(model), logit_softcap(model)
    return lambda rows: softcap(head(norm(rows.to(head.weight.dtype))).float(), cap), head


@torch.no_grad()
def chunked_logit_lens(model: nn.Module, resid: Float[Tensor, "n_layers pos d_model"], target: Int[Tensor, " pos"] | None = None,
                       k: int = 1, rows_per_chunk: int = 256) -> LensTopK:
    """Logit lens of ``model`` on ``resid`` (each layer's ``hook_resid_post``), ``rows_per_chunk`` (layer,
    position) rows per unembedding matmul: peak extra memory at most rows_per_chunk × d_vocab fp32 logits
    (rows_per_chunk × 4096: the kernel also tiles the vocabulary), whatever the number of layers and positions (batching rows reads the unembedding once per chunk instead of
    once per layer). All outputs on the CPU.

    Raises:
        ConfigError: the model keeps its final norm / unembedding elsewhere than ``model.norm`` / ``lm_head``
            (see :mod:`workbench.architecture`).
    """
    head = unembedding(model)
    n_layers, n_pos, _ = resid.shape
    tgt = None if target is None else target.to(resid.device).repeat(n_layers)
    ids, probs, tprob = lens_topk(final_norm(model), head, resid.flatten(0, 1), k=k, target=tgt, cap=logit_softcap(model),
                                  rows_per_chunk=rows_per_chunk)
    kk = ids.shape[-1]
    return LensTopK(ids.view(n_layers, n_pos, kk).cpu(), probs.view(n_layers, n_pos, kk).cpu(),
                    None if tprob is None else tprob.view(n_layers, n_pos).cpu())


@torch.no_grad()
def full_logit_lens(model: nn.Module, resid: Float[Tensor, "n_layers pos d_model"], target: Int[Tensor, " pos"] | None = None,
                    k: int = 1) -> LensTopK:
    """The same as :func:`chunked_logit_lens` in one matmul (materialises ``[n_layers, pos, d_vocab]``):
    the reference for tests, not for the app."""
    read, _ = _readout(model)
    p = read(resid).softmax(-1)
    top = p.topk(min(k, p.shape[-1]), dim=-1)
    tprob = None if target is None else p.gather(-1, target.to(p.device).expand(resid.shape[0], -1)[..., None])[..., 0].cpu()
    return LensTopK(top.indices.cpu(), top.values.cpu(), tprob)
