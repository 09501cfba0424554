"""Linear-time layer search: which layers' attention outputs carry the intent (and the last-token helpers).

Source: Minder, Du, Stoehr, Monea, Wendler, West, Cotterell, "Controllable Context Sensitivity and the
Knob Behind It", ICLR 2025, §4.1. Patch ``hook_attn_out`` (the attention block's write into the residual
stream) at a window of layers from the flipped-intent prompt into the target at the last token, and
binary-search the window's bounds: ``O(log n_layers)`` forward passes instead of the ``O(n_layers²)`` of
trying every window. Re-exported by :mod:`probes.subspace`.

``targets`` / ``sources`` are token-id lists of paired prompts; ``adapter`` (optional, any
:class:`~workbench.intervention.Intervention`, e.g. a LoRA adapter) is attached around every forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.data import as_token_ids, final_position_logits, right_pad
from workbench.errors import ConfigError
from workbench.architecture import decoder_layers
from workbench.hooked import hooks, record
from workbench.sites import Site

Seqs = Sequence[Sequence[int]]


def attached(adapter: Any, model: nn.Module):
    """``adapter.attach(model)``, or a no-op context when ``adapter`` is None."""
    return adapter.attach(model) if adapter is not None else nullcontext()


def check_layer(layer: int, n_layers: int) -> None:
    """Raises:
        ConfigError: ``layer`` is not an int in ``0..n_layers-1``.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ConfigError(f"layer {layer!r} out of range: the model has layers 0..{n_layers - 1}")


def check_pairs(targets: Seqs, sources: Seqs, answer_ids: Sequence[int]) -> None:
    """Raises:
        ConfigError: no targets, or not one source and one answer per target.
    """
    try:
        lengths = (len(targets), len(sources), len(answer_ids))
    except TypeError as exc:
        raise ConfigError("targets and sources must be lists of token-id lists and answer_ids a list of ids, "
                          f"got {type(targets).__name__}, {type(sources).__name__}, {type(answer_ids).__name__}") from exc
    if lengths[0] == 0 or not lengths[0] == lengths[1] == lengths[2]:
        raise ConfigError(f"need as many sources and answers as targets (>= 1): {len(targets)} targets, "
                          f"{len(sources)} sources, {len(answer_ids)} answers")
    as_token_ids(answer_ids if isinstance(answer_ids, Tensor) else list(answer_ids), "answer_ids", ndim=1)


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` items.

    Raises:
        ConfigError: ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def last_token_acts(model: nn.Module, seqs: Seqs, hook: str, layers: Sequence[int], *, adapter: Any = None,
                    batch_size: int = 32, pad_id: int = 0) -> dict[int, Float[Tensor, "n d_model"]]:
    """``{layer: [n_prompts, d_model]}`` (fp32, model device) of ``blocks.{layer}.{hook}`` at each prompt's
    last token — one forward pass per batch, whatever the number of layers.

    Raises:
        ConfigError: no prompts, or a layer out of range.
    """
    if not seqs:
        raise ConfigError("last_token_acts() needs at least one prompt")
    n_layers = len(decoder_layers(model))
    for layer in layers:
        check_layer(layer, n_layers)
    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    for sl in chunks(len(seqs), batch_size):
        ids, mask, last = right_pad(seqs[sl], pad_id)
        rows = torch.arange(len(last))

        sites = {layer: Site(layer, hook) for layer in layers}
        with attached(adapter, model), record(model, list(sites.values()), dtype=torch.float32,
                                              select=lambda a, r=rows, p=last: a[r.to(a.device), p.to(a.device)]) as rec:
            device = next(model.parameters()).device
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
        for layer, site in sites.items():
            out[layer].append(rec[site])
    return {l: torch.cat(v) for l, v in out.items()}


# --- (a) linear-time layer search -----------------------------------------------------------------
@dataclass
class LayerSearchResult:
    """Outcome of :func:`layer_search`: patching ``hook`` at layers ``lo..hi`` (inclusive) passes
    ``threshold``; ``full_value`` = metric with all layers patched, ``clean_value`` = with none.
    ``trace``: every evaluated window ``{"stage", "lo", "hi", "value", "passed"}`` in order.
    ``n_forward_passes`` counts every model call (source caching included)."""

    lo: int
    hi: int
    threshold: float
    threshold_mode: str
    full_value: float
    clean_value: float
    n_layers: int
    hook: str
    n_evaluations: int = 0
    n_forward_passes: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def patched_answer_prob(model: nn.Module, targets: Seqs, source_acts: dict[int, Tensor], answer_ids: Sequence[int],
                        layers: Sequence[int], *, hook: str = "hook_attn_out", adapter: Any = None, batch_size: int = 32,
                        pad_id: int = 0) -> float:
    """Mean probability of ``answer_ids[i]`` at target ``i``'s last token when ``blocks.{l}.{hook}`` at that
    token is replaced by ``source_acts[l][i]`` for every ``l`` in ``layers`` (none = the clean target)."""
    total = 0.0
    answers = torch.tensor(list(answer_ids))
    for sl in chunks(len(targets), batch_size):
        ids, mask, last = right_pad(targets[sl], pad_id)
        rows = torch.arange(len(last))

        def patch(layer: int):
            def fn(act: Tensor) -> Tensor:
                r, p = rows.to(act.device), last.to(act.device)
                return act.index_put((r, p), source_acts[layer][sl].to(act))
            return fn

        with attached(adapter, model), hooks(model, {Site(layer, hook): patch(layer) for layer in layers}):
            probs = final_position_logits(model, ids, mask, last).float().softmax(-1)
        total += float(probs.gather(-1, answers[sl, None].to(probs.device)).sum())
    return total / len(targets)


def layer_search(model: nn.Module, targets: Seqs, sources: Seqs, answer_ids: Sequence[int], *,
                 hook: str = "hook_attn_out", threshold: float = 0.85, relative: bool = True, adapter: Any = None,
                 batch_size: int = 32, pad_id: int = 0) -> LayerSearchResult:
    """The layer window whose ``hook`` outputs carry the intent (Minder et al. 2025, §4.1).

    When target and source end with the same token (the paired prompts of the intent task do), patching
    ``hook_attn_out`` at *all* layers at the last token reproduces the source run's last-token residual
    exactly (same embedding; the MLPs only see that position), so the full patch gives the source run's
    own answer probability. With ``relative=True`` (default) a window passes when
    the mean source-answer probability is ``>= threshold × full_value``; with ``relative=False`` when it is
    ``>= threshold`` (an absolute probability). Two binary searches, assuming the metric grows as the
    window grows: the smallest ``hi`` such that ``[0, hi]`` passes, then the largest ``lo`` such that
    ``[lo, hi]`` passes. Evaluations: 2 (clean, full) + ⌈log₂ n_layers⌉ + ⌈log₂(hi+1)⌉, each one forward
    pass per batch, plus one pass per batch to cache the sources — ``O(log n_layers)``, not the
    ``O(n_layers²)`` of trying every window.

    Raises:
        ConfigError: mismatched inputs, a threshold outside (0, 1] (relative) or (0, 1) (absolute), an
            unknown hook, or an absolute threshold the full patch itself does not reach.
    """
    check_pairs(targets, sources, answer_ids)
    if hook not in ("hook_attn_out", "hook_mlp_out", "hook_resid_post"):
        raise ConfigError(f"layer_search patches 'hook_attn_out' (or hook_mlp_out / hook_resid_post), not {hook!r}")
    if not (0 < threshold <= 1 if relative else 0 < threshold < 1) or not math.isfinite(threshold):
        raise ConfigError(f"threshold must be in (0, 1]{' (relative)' if relative else ' (absolute probability)'}, got {threshold}")
    n_layers = len(decoder_layers(model))
    n_batches = math.ceil(len(targets) / batch_size)
    source_acts = last_token_acts(model, sources, hook, range(n_layers), adapter=adapter, batch_size=batch_size, pad_id=pad_id)
    res = LayerSearchResult(-1, -1, float("nan"), "relative" if relative else "absolute", float("nan"), float("nan"), n_layers, hook,
                            n_forward_passes=n_batches)
    memo: dict[tuple[int, int], float] = {}

    def value(lo: int, hi: int, stage: str) -> float:
        if (lo, hi) not in memo:
            memo[(lo, hi)] = patched_answer_prob(model, targets, source_acts, answer_ids, range(lo, hi + 1), hook=hook,
                                                 adapter=adapter, batch_size=batch_size, pad_id=pad_id)
            res.n_evaluations += 1
            res.n_forward_passes += n_batches
            passed = not math.isnan(res.threshold) and memo[(lo, hi)] >= res.threshold
            res.trace.append({"stage": stage, "lo": lo, "hi": hi, "value": memo[(lo, hi)], "passed": passed})
        return memo[(lo, hi)]

    res.clean_value = value(0, -1, "clean")
    res.full_value = value(0, n_layers - 1, "full")
    res.threshold = threshold * res.full_value if relative else threshold
    for entry in res.trace:
        entry["passed"] = entry["value"] >= res.threshold
    if res.full_value < res.threshold:
        raise ConfigError(f"patching all {n_layers} layers gives {res.full_value:.3f} < the absolute threshold {threshold}; "
                          "lower it or use relative=True")
    lo_b, hi_b = 0, n_layers - 1  # smallest hi with value(0, hi) >= threshold; hi_b always passes
    while lo_b < hi_b:
        mid = (lo_b + hi_b) // 2
        lo_b, hi_b = (lo_b, mid) if value(0, mid, "upper") >= res.threshold else (mid + 1, hi_b)
    res.hi = hi_b
    lo_b, hi_b = 0, res.hi  # largest lo with value(lo, hi) >= threshold; lo_b always passes
    while lo_b < hi_b:
        mid = (lo_b + hi_b + 1) // 2
        lo_b, hi_b = (mid, hi_b) if value(mid, res.hi, "lower") >= res.threshold else (lo_b, mid - 1)
    res.lo = lo_b
    return res
