"""Base vs tuned on a few prompts (the quickstart's report, the app's analysis view): the corpus measures of
:mod:`probes.diff` — per-token KL (:func:`probes.diff.kl.token_kl`), per-layer residual differences (norm and cosine)
and per-head output differences — on equal-length prompts, without streaming. Standard model-diffing measures
(METHODS.md, "Dataset-level model diffing"); both models read through their TransformerLens bridges (:class:`ModelPair`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.diff.kl import token_kl
from probes.diff.layers import head_diff_norm
from workbench.architecture import w_o
from workbench.data import as_token_ids, vocab_size_of


def per_token_kl(base_logits: Float[Tensor, "batch pos d_vocab"], tuned_logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch pos"]:
    """KL(P_tuned ‖ P_base) of the next-token distributions at every position, in nats."""
    return token_kl(tuned_logits.float().log_softmax(-1), base_logits.float().log_softmax(-1))


@dataclass
class ModelDiff:
    """Averages over the prompts given to :func:`compare`.

    Attributes:
        kl: ``[pos]`` mean per-token KL(P_tuned ‖ P_base), nats.
        resid_diff_norm: ``[n_layers, pos]`` mean ‖resid_tuned − resid_base‖₂ at ``hook_resid_post``.
        resid_rel_diff: ``[n_layers, pos]`` the same divided by mean ‖resid_base‖₂ (unitless).
        resid_cosine: ``[n_layers, pos]`` mean cosine similarity of the two residual streams.
        head_diff_norm: ``[n_layers, n_heads]`` mean ‖out_tuned,h − out_base,h‖₂ at the last position,
            where out_h = z_h W_O,hᵀ (each model with its own W_O).
        n_prompts: number of prompts averaged.
    """

    kl: Tensor
    resid_diff_norm: Tensor
    resid_rel_diff: Tensor
    resid_cosine: Tensor
    head_diff_norm: Tensor
    n_prompts: int

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}


@torch.no_grad()
def head_output_weights(pair: Any) -> tuple[list[Tensor], list[Tensor]]:
    """Each layer's W_O ``Float[Tensor, "d_model n_heads_x_d_head"]`` of the base and of the tuned side, the tuned one
    read inside ``pair.tuned_context()``: an intervention on shared weights (a LoRA run's adapters) is on only there."""
    n_layers = pair.base_info.n_layers
    w_base = [w_o(pair.base, l) for l in range(n_layers)]
    with pair.tuned_context():
        w_tuned = [w_o(pair.tuned, l) for l in range(n_layers)]
    return w_base, w_tuned


def compare(pair, input_ids: Int[Tensor, "batch pos"], batch_size: int = 16) -> ModelDiff:
    """Run base and tuned on the same equal-length prompts and measure where they differ.

    Args:
        pair: a :class:`~workbench.pair.ModelPair`.
        input_ids: ``Int[Tensor, "batch pos"]`` token ids (or ``list[list[int]]``), no padding (all prompts the
            same length).
        batch_size: prompts per forward pass.

    Raises:
        ConfigError: empty input, ragged rows, a non-2-D input, ids outside the vocabulary
            (:func:`workbench.data.as_token_ids`).
    """
    input_ids = as_token_ids(input_ids, "input_ids", vocab_size=vocab_size_of(pair.base))
    n_layers = pair.base_info.n_layers
    keep = lambda name: name.endswith("hook_resid_post") or name.endswith("attn.hook_z")  # noqa: E731
    w_base, w_tuned = head_output_weights(pair)
    sums: dict[str, Tensor] = {}

    def add(key: str, value: Tensor) -> None:
        sums[key] = sums.get(key, 0) + value

    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        bl, bc, tl, tc = pair.run_with_cache(ids, names_filter=keep)
        add("kl", per_token_kl(bl, tl).sum(0))
        for l in range(n_layers):
            rb, rt = bc[f"blocks.{l}.hook_resid_post"].float(), tc[f"blocks.{l}.hook_resid_post"].float()
            add(f"rd{l}", (rt - rb).norm(dim=-1).sum(0))
            add(f"rn{l}", rb.norm(dim=-1).sum(0))
            add(f"rc{l}", torch.nn.functional.cosine_similarity(rt, rb, dim=-1).sum(0))
            zb, zt = bc[f"blocks.{l}.attn.hook_z"][:, -1], tc[f"blocks.{l}.attn.hook_z"][:, -1]
            add(f"hd{l}", head_diff_norm(zt, zb, w_tuned[l], w_base[l])[0].sum(0))
    n = input_ids.shape[0]
    stack = lambda key: torch.stack([sums[f"{key}{l}"] for l in range(n_layers)]) / n  # noqa: E731
    diff = stack("rd")
    return ModelDiff(
        kl=sums["kl"] / n,
        resid_diff_norm=diff,
        resid_rel_diff=diff / stack("rn").clamp_min(1e-12),
        resid_cosine=stack("rc"),
        head_diff_norm=stack("hd"),
        n_prompts=n,
    )
