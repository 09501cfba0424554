"""Everything the app shows about one prompt, computed once from one pass of each model (no streamlit).

:func:`analyse_prompt` runs base and tuned through their TransformerLens bridges
(:meth:`~workbench.pair.ModelPair.run_with_cache`) on the same tokens and reduces the caches to what the
views need: next-token predictions, per-token KL, a logit lens, residual-stream differences, attention
patterns, per-head output differences and the MLP neurons that changed most. The per-token KL and the
per-head outputs use :func:`probes.diff.prompts.per_token_kl` and :func:`probes.diff.layers.head_diff_norm`;
the residual differences are the same quantities as :func:`probes.diff.prompts.compare` for one prompt
(checked by a test).

Logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): each layer's ``hook_resid_post``
goes through the model's own final norm and unembedding, as if the remaining layers were skipped.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.logit_lens import chunked_logit_lens
from probes.diff.layers import head_diff_norm
from probes.diff.prompts import per_token_kl
from workbench.architecture import w_o
from workbench.errors import ConfigError

#: Longest prompt the app analyses, in tokens (BOS included when the model uses one). Attention patterns
#: grow with pos², the residual streams and MLP activations kept for the views with n_layers × pos.
MAX_PROMPT_TOKENS = 256
#: The logit lens covers the last this many positions: it costs n_layers × positions × d_model × d_vocab
#: multiply-adds per model (30 × 32 × 576 × 49152 ≈ 27 G for the default model). Measured per model on the
#: shared 2-core development machine: 0.6 s for 10 positions, 2.6 s for 60, 10 s for 250.
LENS_POSITIONS = 32
ROLES = ("base", "tuned")
_HOOKS = ("hook_resid_post", "attn.hook_z", "attn.hook_pattern", "mlp.hook_post")


@dataclass
class NeuronRanking:
    """The MLP neurons whose activation (``mlp.hook_post``) changed most, largest |Δ| first.

    Attributes:
        layer, neuron: ``[k]`` indices.
        base, tuned: ``[k]`` activations of each model (at one position, or their mean over positions).
        delta: ``[k]`` ``tuned − base`` (or the mean |tuned − base| over positions for the aggregate).
    """

    layer: list[int]
    neuron: list[int]
    base: list[float]
    tuned: list[float]
    delta: list[float]


@dataclass
class PromptAnalysis:
    """One prompt through both models. ``pos`` counts tokens (BOS included when the model uses one).

    Attributes:
        prompt: the text.
        input_ids: ``Int[Tensor, " pos"]``.
        tokens: ``[pos]`` decoded tokens.
        top_ids, top_probs: role -> ``[pos, k]`` top-k next-token ids and probabilities.
        vocab: decoded text of every token id that appears in ``top_ids`` or ``lens_top_ids``.
        kl: ``[pos]`` KL(P_tuned ‖ P_base) of the next-token distributions, nats.
        lens_start: first position the logit lens covers (it covers ``lens_start .. pos - 1``).
        lens_top_ids, lens_top_probs: role -> ``[n_layers, pos - lens_start]`` the logit lens's top-1 token
            and its probability at each layer.
        lens_final_prob: role -> ``[n_layers, pos - lens_start]`` probability the lens gives at each layer
            to that model's final top-1 token.
        resid_post: role -> ``[n_layers, pos, d_model]`` ``hook_resid_post`` (float32).
        resid_diff_norm: ``[n_layers, pos]`` ‖resid_tuned − resid_base‖₂.
        resid_rel_diff: ``[n_layers, pos]`` the same divided by ‖resid_base‖₂.
        resid_cosine: ``[n_layers, pos]`` cosine similarity of the two residual streams.
        patterns: role -> ``[n_layers, n_heads, pos_q, pos_k]`` attention probabilities (float16).
        head_diff: ``[n_layers, pos, n_heads]`` ‖out_tuned,h − out_base,h‖₂ with out_h = z_h W_O,hᵀ.
        mlp_post: role -> ``[n_layers, pos, d_mlp]`` neuron activations (float16).
        neurons_at: ``[pos]`` rankings of changed neurons at each position; ``neurons_all``: ranking by
            mean |Δ| over positions.
    """

    prompt: str
    input_ids: Int[Tensor, " pos"]
    tokens: list[str]
    top_ids: dict[str, Tensor]
    top_probs: dict[str, Tensor]
    vocab: dict[int, str]
    kl: Float[Tensor, " pos"]
    lens_start: int
    lens_top_ids: dict[str, Tensor]
    lens_top_probs: dict[str, Tensor]
    lens_final_prob: dict[str, Tensor]
    resid_post: dict[str, Tensor]
    resid_diff_norm: Float[Tensor, "n_layers pos"]
    resid_rel_diff: Float[Tensor, "n_layers pos"]
    resid_cosine: Float[Tensor, "n_layers pos"]
    patterns: dict[str, Tensor]
    head_diff: Float[Tensor, "n_layers pos n_heads"]
    mlp_post: dict[str, Tensor]
    neurons_at: list[NeuronRanking]
    neurons_all: NeuronRanking

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def labels(self) -> list[str]:
        """``"i:token"`` labels for the positions."""
        return [f"{i}:{t}" for i, t in enumerate(self.tokens)]

    def decode(self, ids: Tensor) -> list:
        """Token ids (any shape) -> nested lists of their decoded text."""
        return [self.decode(row) for row in ids] if ids.ndim > 1 else [self.vocab[int(t)] for t in ids]


def tokenize_prompt(pair, prompt: str, max_tokens: int = MAX_PROMPT_TOKENS) -> Int[Tensor, "1 pos"]:
    """The prompt's token ids (BOS prepended if the model needs it), shape ``[1, pos]``.

    Raises:
        ConfigError: an empty prompt, or more than ``max_tokens`` tokens (the message gives both counts).
    """
    if not prompt or not prompt.strip():
        raise ConfigError("the prompt is empty: type some text to analyse")
    ids, _ = pair.tokenize([prompt])
    if ids.shape[1] > max_tokens:
        raise ConfigError(f"the prompt has {ids.shape[1]} tokens; the app analyses at most {max_tokens} tokens. "
                          "Shorten the prompt (attention patterns and the logit lens grow with its length).")
    return ids


def logit_lens(model: nn.Module, resid: Float[Tensor, "n_layers pos d_model"], final_top: Int[Tensor, " pos"],
               rows_per_chunk: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Logit lens over every layer and position, in chunks of ``rows_per_chunk`` (layer, position) rows with a
    streaming top-1 (:func:`probes.logit_lens.chunked_logit_lens`: never ``[n_layers, pos, d_vocab]``).

    Returns:
        ``(top_ids [n_layers, pos], top_probs [n_layers, pos], final_token_prob [n_layers, pos])``.

    Raises:
        ConfigError: the model keeps its final norm / unembedding elsewhere than ``model.norm`` / ``lm_head``
            (see :mod:`workbench.architecture`).
    """
    lens = chunked_logit_lens(model, resid, final_top, k=1, rows_per_chunk=rows_per_chunk)
    return lens.top_ids[..., 0], lens.top_probs[..., 0], lens.target_prob


def rank_neurons(base: Float[Tensor, "n_layers d_mlp"], tuned: Float[Tensor, "n_layers d_mlp"], score: Float[Tensor, "n_layers d_mlp"],
                 k: int) -> NeuronRanking:
    """The ``k`` (layer, neuron) pairs with the largest ``score``, with both activations and the score."""
    k = min(k, score.numel())
    top = score.flatten().topk(k).indices
    d_mlp = score.shape[1]
    layer, neuron = (top // d_mlp).tolist(), (top % d_mlp).tolist()
    pick = lambda t: t.flatten()[top].tolist()  # noqa: E731
    return NeuronRanking(layer, neuron, pick(base), pick(tuned), pick(score))


def _stack_layers(cache, hook: str, n_layers: int) -> Tensor:
    """``[n_layers, ...]``: ``blocks.{l}.{hook}`` of every layer, first batch row."""
    return torch.stack([cache[f"blocks.{l}.{hook}"][0] for l in range(n_layers)])


@torch.no_grad()
def analyse_prompt(pair, prompt: str, max_tokens: int = MAX_PROMPT_TOKENS, top_k: int = 10, n_neurons: int = 20,
                   lens_positions: int | None = LENS_POSITIONS) -> PromptAnalysis:
    """Run both models once on ``prompt`` and compute every view's data (all tensors on the CPU).

    Args:
        pair: a :class:`~workbench.pair.ModelPair`.
        prompt: the text (tokenised without special tokens; BOS prepended if the model needs it).
        max_tokens: refuse longer prompts.
        top_k: next-token candidates kept per position and model.
        n_neurons: changed neurons kept per position.
        lens_positions: the logit lens covers the last this many positions (``None``: all; ``0``: none, as the app
            does: it computes a window apart with :func:`app.views.lens.lens_window`).

    Raises:
        ConfigError: empty or too long prompt (see :func:`tokenize_prompt`); an architecture without
            ``model.norm`` / ``lm_head``.
    """
    ids = tokenize_prompt(pair, prompt, max_tokens)
    device = next(pair.base.parameters()).device
    keep = lambda name: name.endswith(_HOOKS)  # noqa: E731
    bl, bc, tl, tc = pair.run_with_cache(ids.to(device), names_filter=keep)
    n_layers = pair.base_info.n_layers
    lens_start = 0 if lens_positions is None else max(0, ids.shape[1] - max(0, lens_positions))
    kl = per_token_kl(bl, tl)[0].cpu()
    caches, logits, models = {"base": bc, "tuned": tc}, {"base": bl[0].float(), "tuned": tl[0].float()}, {"base": pair.base, "tuned": pair.tuned}
    del bl, bc, tl, tc  # each role's cache is freed as soon as it is reduced (peak memory)

    out: dict[str, dict[str, Tensor]] = {k: {} for k in ("top_ids", "top_probs", "lens_ids", "lens_probs", "lens_final", "resid", "patterns", "mlp")}
    z = {}
    for role in ROLES:
        cache = caches.pop(role)
        stack = lambda hook, c=cache: _stack_layers(c, hook, n_layers)  # noqa: E731
        probs = logits[role].softmax(-1)
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        out["top_ids"][role], out["top_probs"][role] = top.indices.cpu(), top.values.cpu()
        final_top = probs[lens_start:].argmax(-1)
        del probs
        resid = stack("hook_resid_post").float()
        if lens_start < resid.shape[1]:  # the tuned side's final norm / unembedding under its intervention (full FT changes them)
            with pair.tuned_context() if role == "tuned" else nullcontext():
                lens = logit_lens(models[role], resid[:, lens_start:], final_top)
        else:  # no lens here: the app computes its window apart (app.views.lens), after the rest of the view
            lens = (torch.zeros(n_layers, 0, dtype=torch.long), torch.zeros(n_layers, 0), torch.zeros(n_layers, 0))
        out["lens_ids"][role], out["lens_probs"][role], out["lens_final"][role] = lens
        out["resid"][role] = resid.cpu()
        out["patterns"][role] = stack("attn.hook_pattern").to(torch.float16).cpu()
        out["mlp"][role] = stack("mlp.hook_post").float().cpu()
        z[role] = stack("attn.hook_z")  # [n_layers, pos, n_heads, d_head]
        del cache, resid

    rb, rt = out["resid"]["base"], out["resid"]["tuned"]
    diff = (rt - rb).norm(dim=-1)
    head_diff = torch.stack([head_diff_norm(z["tuned"][l], z["base"][l], w_o(pair.tuned, l), w_o(pair.base, l))[0]
                             for l in range(n_layers)]).cpu()  # [n_layers, pos, n_heads]
    mb, mt = out["mlp"]["base"], out["mlp"]["tuned"]
    delta = mt - mb  # [n_layers, pos, d_mlp]
    neurons_at = [rank_neurons(mb[:, p], mt[:, p], delta[:, p].abs(), n_neurons) for p in range(delta.shape[1])]
    for r in neurons_at:  # signed delta at one position
        r.delta = [t - b for b, t in zip(r.base, r.tuned)]
    neurons_all = rank_neurons(mb.mean(1), mt.mean(1), delta.abs().mean(1), n_neurons)
    ids_cpu = ids[0].cpu()
    seen = torch.cat([ids_cpu, *(t.flatten() for d in (out["top_ids"], out["lens_ids"]) for t in d.values())]).unique().tolist()
    vocab = {int(t): pair.tokenizer.decode([int(t)]) for t in seen}
    return PromptAnalysis(
        prompt=prompt, input_ids=ids_cpu, tokens=[vocab[int(t)] for t in ids_cpu],
        top_ids=out["top_ids"], top_probs=out["top_probs"], vocab=vocab, kl=kl, lens_start=lens_start,
        lens_top_ids=out["lens_ids"], lens_top_probs=out["lens_probs"], lens_final_prob=out["lens_final"],
        resid_post=out["resid"], resid_diff_norm=diff, resid_rel_diff=diff / rb.norm(dim=-1).clamp_min(1e-12),
        resid_cosine=torch.nn.functional.cosine_similarity(rt, rb, dim=-1),
        patterns=out["patterns"], head_diff=head_diff,
        mlp_post={role: out["mlp"][role].to(torch.float16) for role in ROLES},
        neurons_at=neurons_at, neurons_all=neurons_all,
    )

