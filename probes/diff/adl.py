"""Activation Difference Lens (ADL): read what a narrow fine-tune changed from the mean activation difference
on unrelated text.

Source: Minder, Dumas, Slocum, Casademunt, Holmes, West, Nanda, "Narrow Finetuning Leaves Clearly Readable
Traces in Activation Differences", arXiv 2510.13900 (2025), §3 (method: mean difference on the first tokens,
logit lens, Patchscope, steering) — METHODS.md "Activation Difference Lens".

1. :class:`DeltaAccumulator`: ``δ_j = mean over rows of (r_tuned − r_base)`` at ``blocks.{layer}.hook_resid_post``
   for each of the first ``k`` text positions ``j`` (after a BOS the model prepends; BOS itself is skipped),
   streamed batch by batch; also the mean base residual norm n̄ = mean ‖r_base‖ at that layer over every real position
   but a row's first (BOS or first token: an attention sink whose norm is an outlier, ~30× the rest on SmolLM2) —
   the unit of the scales below.
2. :func:`lens_tokens`: top tokens of ``readout(δ)`` and of ``readout(−δ)`` (final norm + unembedding).
3. :func:`patchscope`: the base model on an identity prompt (default ``"cat -> cat; 1135 -> 1135; hello -> hello; ? ->"``)
   with the residual at the placeholder ``?`` (at ``layer``) *replaced* by ``s · n̄ · δ/‖δ‖`` (``n̄`` = mean
   ‖r_base‖; ``s`` from a grid), read at the last position.
4. :func:`steering_search`: greedy generation by the base model with ``α · n̄ · δ/‖δ‖`` added to its residual
   at ``layer`` at every position; ``α`` from a grid. A generation is coherent when the *unsteered* base
   model's mean NLL of its generated tokens is ≤ ``threshold_nats`` (the caller uses the base loss on the corpus
   + a margin; the paper uses an LLM judge) and its share of distinct tokens ≥ ``min_distinct_fraction``
   (greedy loops of one token have a low NLL); the chosen α is the largest coherent one.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from probes.diff.stats import TokenMean
from workbench.architecture import readout
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site

DEFAULT_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ? ->"


class DeltaAccumulator:
    """Running ``Σ (r_tuned − r_base)`` at each of the first ``k`` text positions (memory O(k · d_model)).

    Args:
        k: positions per row (``start .. start + k - 1``).
        d_model: residual width.
        start: first text position (1 when a BOS is prepended, else 0).
    """

    def __init__(self, k: int, d_model: int, start: int = 0) -> None:
        self.k, self.start = int(k), int(start)
        self.sums = torch.zeros(k, d_model, dtype=torch.float64)
        self.counts = torch.zeros(k, dtype=torch.long)
        self.norm, self.norm_first = TokenMean(), TokenMean()

    @torch.no_grad()
    def update(self, tuned: Float[Tensor, "batch pos d_model"], base: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]) -> None:
        mask = mask.bool().to(base.device)
        for j in range(self.k):
            p = self.start + j
            if p >= mask.shape[1]:
                break
            valid = mask[:, p]
            self.sums[j] += (tuned[valid, p].double() - base[valid, p].double()).sum(0).cpu()
            self.counts[j] += int(valid.sum())
        later = mask.clone()  # the first position (BOS, or the first text token) is an attention sink with an outlier norm
        later[:, : max(self.start, 1)] = False
        norms = base.double().norm(dim=-1)
        self.norm.add(norms[later].sum(), int(later.sum()))
        self.norm_first.add(norms[mask & ~later].sum(), int((mask & ~later).sum()))

    def result(self) -> dict[str, Any]:
        """``delta_by_position`` ``[k, d_model]`` (rows with fewer tokens do not count at later positions),
        ``delta`` = the mean over all (row, position) pairs, their norms, ``n`` per position and ``mean_base_norm``
        (over positions after each row's first; over the first ones when no row has two tokens)."""
        per = self.sums / self.counts.clamp_min(1)[:, None]
        delta = self.sums.sum(0) / max(int(self.counts.sum()), 1)
        return {"delta": delta, "delta_by_position": per, "n_by_position": self.counts.tolist(),
                "delta_norm": float(delta.norm()), "delta_norm_by_position": per.norm(dim=-1).tolist(),
                "mean_base_norm": self.norm.mean() if self.norm.count else self.norm_first.mean()}


def _unit(delta: Tensor) -> Tensor:
    n = delta.norm()
    return delta / n if float(n) > 0 else torch.zeros_like(delta)


def _top(logits: Tensor, k: int, decode: Any) -> list[dict[str, Any]]:
    probs = logits.float().softmax(-1)
    v, i = torch.topk(logits.float(), min(k, logits.numel()))
    return [{"id": int(t), "token": decode(int(t)), "logit": float(x), "prob": float(probs[t])} for x, t in zip(v, i)]


@torch.no_grad()
def lens_tokens(model: nn.Module, delta: Float[Tensor, " d_model"], top_k: int = 20, decode: Any = str) -> dict[str, list]:
    """Logit lens of δ: top tokens of ``readout(δ)`` ("positive") and of ``readout(−δ)`` ("negative").

    Raises:
        ConfigError: the model has no final norm / unembedding.
    """
    p = next(model.parameters())
    d = delta.to(p.device, p.dtype)
    return {"positive": _top(readout(model, d), top_k, decode), "negative": _top(readout(model, -d), top_k, decode)}


def placeholder_position(tokenizer: Any, prompt: str, placeholder: str = "?", prepend_bos: bool = False) -> tuple[list[int], int]:
    """``(token ids of prompt, index of the placeholder's last token)``; the placeholder is its last occurrence.

    Raises:
        ConfigError: the placeholder is not in the prompt, or tokenizing the prompt splits it differently than
            tokenizing the text up to it.
    """
    at = prompt.rfind(placeholder)
    if not placeholder or at < 0:
        raise ConfigError(f"the Patchscope prompt {prompt!r} has no placeholder {placeholder!r}")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    prefix = bos + tokenizer(prompt[: at + len(placeholder)], add_special_tokens=False)["input_ids"]
    if ids[: len(prefix)] != prefix:
        raise ConfigError(f"the Patchscope prompt {prompt!r} tokenizes across the placeholder {placeholder!r}; put spaces around it")
    return ids, len(prefix) - 1


@torch.no_grad()
def patchscope(model: nn.Module, tokenizer: Any, delta: Float[Tensor, " d_model"], layer: int, scales: list[float],
               ref_norm: float, prompt: str = DEFAULT_PROMPT, placeholder: str = "?", prepend_bos: bool = False,
               top_k: int = 20, decode: Any = str) -> dict[str, Any]:
    """Patchscope readout of δ: one batched forward of the base model, one row per scale plus an unpatched row.

    Row ``i`` has its residual at ``blocks.{layer}.hook_resid_post``, placeholder position, replaced by
    ``scales[i] · ref_norm · δ/‖δ‖``; the next-token distribution at the last position is read.

    Raises:
        ConfigError: as :func:`placeholder_position`, or a layer that does not exist.
    """
    ids, pos = placeholder_position(tokenizer, prompt, placeholder, prepend_bos)
    p = next(model.parameters())
    unit = _unit(delta.double()).to(p.device, p.dtype)
    vecs = torch.stack([s * ref_norm * unit for s in scales]) if scales else unit[None, :0]
    batch = torch.tensor([ids] * (len(scales) + 1), device=p.device)

    def patch(x: Tensor) -> Tensor:
        x = x.clone()
        x[: len(scales), pos] = vecs.to(x.dtype)
        return x

    with hooks(model, {Site(layer, "hook_resid_post"): patch}):
        logits = model(input_ids=batch).logits[:, -1]
    return {"prompt": prompt, "placeholder": placeholder, "placeholder_position": pos, "layer": layer,
            "scale_unit": "mean ‖r_base‖ at the layer", "ref_norm": ref_norm,
            "by_scale": [{"scale": float(s), "top": _top(logits[i], top_k, decode)} for i, s in enumerate(scales)],
            "unpatched": _top(logits[-1], top_k, decode)}


@torch.no_grad()
def continuation_nll(model: nn.Module, prompt_ids: list[int], new_ids: list[int]) -> float:
    """Mean NLL (nats/token) of ``new_ids`` after ``prompt_ids`` under ``model`` (no hooks added here)."""
    if not new_ids:
        return float("nan")
    p = next(model.parameters())
    ids = torch.tensor([prompt_ids + new_ids], device=p.device)
    logp = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
    return float(-logp.gather(-1, torch.tensor(new_ids, device=p.device)[:, None]).mean())


@torch.no_grad()
def generate_steered(model: nn.Module, tokenizer: Any, prompt_ids: list[int], vector: Float[Tensor, " d_model"] | None,
                     layer: int, max_new_tokens: int) -> list[int]:
    """Greedy continuation of ``prompt_ids`` with ``vector`` added to ``blocks.{layer}.hook_resid_post`` at every
    position (prompt and generated); ``None`` generates unsteered."""
    p = next(model.parameters())
    ids = torch.tensor([prompt_ids], device=p.device)
    fns = {} if vector is None else {Site(layer, "hook_resid_post"): lambda x: x + vector.to(x.device, x.dtype)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with hooks(model, fns):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt_ids):].tolist()


def steering_search(model: nn.Module, tokenizer: Any, delta: Float[Tensor, " d_model"], layer: int, alphas: list[float],
                    ref_norm: float, prompts: list[str], threshold_nats: float, min_distinct_fraction: float = 0.3,
                    max_new_tokens: int = 24, prepend_bos: bool = False, log: Any = None) -> dict[str, Any]:
    """Steer the base model with ``α · ref_norm · δ/‖δ‖`` for each α and keep the largest coherent α (see the
    module docstring). Returns every generation with its NLL under the unsteered model and its distinct-token
    share, and ``chosen_alpha`` (``None`` when no α > 0 is coherent or δ = 0).

    Raises:
        ConfigError: no prompts, or a layer that does not exist.
    """
    if not prompts:
        raise ConfigError("steering needs at least one prompt")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts]
    unit = _unit(delta.double()).float()
    rows, chosen = [], None
    for alpha in sorted(alphas):
        gens = []
        for text, ids in zip(prompts, encoded):
            new = generate_steered(model, tokenizer, ids, alpha * ref_norm * unit if alpha else None, layer, max_new_tokens)
            gens.append({"prompt": text, "text": tokenizer.decode(new, skip_special_tokens=True),
                         "nll_nats": continuation_nll(model, ids, new),
                         "distinct_fraction": len(set(new)) / len(new) if new else 0.0, "n_tokens": len(new)})
        nll = sum(g["nll_nats"] for g in gens) / len(gens)
        distinct = sum(g["distinct_fraction"] for g in gens) / len(gens)
        coherent = nll <= threshold_nats and distinct >= min_distinct_fraction
        rows.append({"alpha": float(alpha), "mean_nll_nats": nll, "mean_distinct_fraction": distinct, "coherent": coherent,
                     "generations": gens})
        if log:
            log(f"      steering α={alpha:g}: base NLL {nll:.2f} nats/token, distinct {distinct:.2f} -> {'coherent' if coherent else 'not coherent'}")
        if coherent and alpha > 0 and float(delta.norm()) > 0:
            chosen = float(alpha)
    return {"layer": layer, "alpha_unit": "mean ‖r_base‖ at the layer (vector = α · n̄ · δ/‖δ‖)", "ref_norm": ref_norm,
            "threshold_nats": threshold_nats, "min_distinct_fraction": min_distinct_fraction,
            "max_new_tokens": max_new_tokens, "by_alpha": rows, "chosen_alpha": chosen,
            "chosen_in_delta_units": None if chosen is None or float(delta.norm()) == 0 else chosen * ref_norm / float(delta.norm())}
