"""The hooks every edge method runs under: read each sender's output, rewrite each receiver's input.

:func:`edge_hooks` registers (through :func:`workbench.hooked.module_hooks`, so they always come off) forward
(pre-)hooks that

* hand every sender's output to ``on_senders(first, outputs)`` as the forward pass computes it — ``embed`` at layer 0's
  ``input_layernorm`` input, a layer's heads at its ``o_proj`` input (``hook_z`` times each head's ``W_O`` slice,
  ``[n_heads, batch, pos, d_model]``; :func:`workbench.architecture.head_writes`, which calls an ``o_proj`` that is a
  wrapper such as a peft ``lora.Linear`` on each head's part of ``hook_z``, so the effective ``W_O`` is used), its MLP at
  the MLP output (whatever adapters its projections carry);
* replace each receiver's input by ``receiver_input(r, x)`` where ``x`` is the residual stream the receiver reads:
  forward pre-hooks on the receiver's input norm (``input_layernorm``, ``post_attention_layernorm``, the final norm)
  change only what that norm reads, never the residual stream. Per-head receivers (``receivers="head"``) recompute
  each head's slice of the ``q_proj`` / ``k_proj`` / ``v_proj`` output from ``norm(receiver_input(r, x))`` (the norm's
  ``forward``, which runs no hooks) — by the projection's weight slice for a plain ``nn.Linear``, by calling the
  projection for a wrapper (peft LoRA ...); slices whose input is ``x`` itself are kept as computed.

:func:`sender_run` records every sender's output on one input and checks that the logits' input (the final norm's
input) equals the sum of all sender outputs plus the constant ``o_proj`` terms (biases) — the decomposition the graph
assumes (Elhage et al. 2021 "A Mathematical Framework for Transformer Circuits", residual stream as a sum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.edges.graph import Graph
from workbench.architecture import (
    decoder_layers,
    final_norm,
    head_dim,
    head_writes,
    o_proj,
    plain_linear,
    proj_offset,
    unwrap,
)
from workbench.errors import ConfigError
from workbench.hooked import module_hooks

SenderFn = Callable[[int, Tensor], None]
ReceiverFn = Callable[[int, Tensor], Tensor]

__all__ = ["SenderRun", "check_count", "edge_hooks", "final_logits", "input_embeddings", "prepare", "sender_collector",
           "sender_run"]


def _arg(args: tuple, kwargs: dict) -> tuple[Tensor, Callable[[Tensor], tuple]]:
    """A module's first input and a function that puts a replacement back (positional or ``hidden_states=``)."""
    if args:
        return args[0], lambda y: ((y, *args[1:]), kwargs)
    key = "hidden_states" if "hidden_states" in kwargs else "input"
    return kwargs[key], lambda y: (args, {**kwargs, key: y})


@contextmanager
def edge_hooks(model: nn.Module, graph: Graph, on_senders: SenderFn | None = None,
               receiver_input: ReceiverFn | None = None) -> Iterator[None]:
    """Hooks that read sender outputs and rewrite receiver inputs for the forward passes inside the block.

    Args:
        on_senders: called as ``on_senders(first, outputs)`` with ``outputs: Float[Tensor, "k batch pos d_model"]``, the
            outputs of senders ``first .. first + k - 1`` (graph order).
        receiver_input: called as ``receiver_input(r, x)`` with the residual stream ``x: Float[Tensor, "batch pos
            d_model"]`` receiver ``r`` reads; returns what the receiver reads instead (``x`` itself: unchanged).

    Raises:
        ConfigError: an MLP that does not return one tensor (mixture-of-experts router outputs).
    """
    layers = [unwrap(layer) for layer in decoder_layers(model)]
    n_heads, d_head = graph.n_heads, head_dim(model)
    per_head = graph.receiver_kind == "head"
    index = {(r.layer, r.kind, r.head): i for i, r in enumerate(graph.receiver_nodes)}
    stash: dict[int, Tensor] = {}
    pre: list[tuple[nn.Module, Callable[..., Any]]] = []
    post: list[tuple[nn.Module, Callable[..., Any]]] = []

    def attn_norm(layer: int) -> Callable[..., Any]:
        def fn(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            x, put = _arg(args, kwargs)
            if layer == 0 and on_senders is not None:
                on_senders(0, x.unsqueeze(0))
            if per_head:
                stash[layer] = x
                return None
            return None if receiver_input is None else put(receiver_input(index[(layer, "attn", None)], x))
        return fn

    def norm_receiver(r: int) -> Callable[..., Any]:
        def fn(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            x, put = _arg(args, kwargs)
            return put(receiver_input(r, x))
        return fn

    def heads_out(layer: int) -> Callable[..., Any]:
        def fn(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            z, _ = _arg(args, kwargs)
            on_senders(graph.head_sender(layer, 0), head_writes(mod, z, n_heads))
        return fn

    def mlp_out(layer: int) -> Callable[..., Any]:
        def fn(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if not isinstance(out, Tensor):
                raise ConfigError(f"layer {layer}: {type(mod).__name__} returns {type(out).__name__}, not one tensor; edge "
                                  "attribution patching supports dense MLPs only")
            on_senders(graph.mlp_sender(layer), out.unsqueeze(0))
        return fn

    def proj_heads(layer: int, kind: str, norm: nn.Module) -> Callable[..., Any]:
        def fn(mod: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor | None:
            x = stash[layer]
            n = out.shape[-1] // d_head
            ins = [receiver_input(index[(layer, kind, g)], x) for g in range(n)]
            if all(t is x for t in ins):
                return None
            lin, parts = plain_linear(mod), []
            changed = [g for g, t in enumerate(ins) if t is not x]
            if lin is None:  # a wrapper (peft LoRA ...): call it on every changed input at once, keep each head's rows
                full = dict(zip(changed, mod.forward(torch.stack([norm.forward(ins[g]) for g in changed]))))
            for g, t in enumerate(ins):
                rows = slice(g * d_head, (g + 1) * d_head)
                if t is x:
                    parts.append(out[..., rows])
                elif lin is None:
                    parts.append(full[g][..., rows])
                else:
                    parts.append(F.linear(norm.forward(t), lin.weight[rows], None if lin.bias is None else lin.bias[rows]))
            return torch.cat(parts, -1)
        return fn

    for layer, block in enumerate(layers):
        attn = unwrap(block.self_attn)
        in_norm, mlp_norm = unwrap(block.input_layernorm), unwrap(block.post_attention_layernorm)
        if (layer == 0 and on_senders is not None) or (receiver_input is not None) or per_head:
            pre.append((in_norm, attn_norm(layer)))
        if receiver_input is not None:
            pre.append((mlp_norm, norm_receiver(index[(layer, "mlp", None)])))
            if per_head:
                post += [(unwrap(getattr(attn, f"{k}_proj")), proj_heads(layer, k, in_norm)) for k in ("q", "k", "v")]
        if on_senders is not None:
            pre.append((unwrap(attn.o_proj), heads_out(layer)))
            post.append((unwrap(block.mlp), mlp_out(layer)))
    if receiver_input is not None:
        pre.append((final_norm(model), norm_receiver(len(graph.receivers) - 1)))
    with module_hooks(pre, post, with_kwargs=True):
        try:
            yield
        finally:
            stash.clear()


def input_embeddings(model: nn.Module, ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    """The input embeddings of ``ids`` (``model.get_input_embeddings()``, before any scaling the model applies)."""
    emb = unwrap(model).get_input_embeddings()
    return emb(ids.to(emb.weight.device))


def final_logits(model: nn.Module, embeds: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_vocab"]:
    """Final-position logits of a forward pass on input embeddings, in fp32 (fp64 for an fp64 model)."""
    logits = model(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1]
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class SenderRun:
    """One recorded run: ``outputs`` ``Float[Tensor, "n_senders batch pos d_model"]`` (every sender's output, detached),
    ``logits`` ``Float[Tensor, "batch d_vocab"]`` (final position), ``resid`` ``Float[Tensor, "n_layers_plus_1 batch pos
    d_model"]`` (the residual stream entering each layer, then the final norm's input)."""

    def __init__(self, outputs: Tensor, logits: Tensor, resid: Tensor) -> None:
        self.outputs, self.logits, self.resid = outputs, logits, resid


def _bias_total(model: nn.Module, graph: Graph, like: Tensor) -> Tensor:
    """Σ over layers of the ``o_proj`` constant terms (biases; ``o_proj(0)`` for a wrapper), which no head sender
    carries: ``[d_model]`` fp32, zeros when there are none."""
    d_in = graph.n_heads * head_dim(model)
    return sum(proj_offset(o_proj(model, i), d_in, like).detach().float() for i in range(graph.n_layers))


def sender_collector(graph: Graph, out: dict[str, Tensor]) -> SenderFn:
    """An ``on_senders`` that writes detached outputs into ``out["senders"]`` (allocated on first call)."""
    n = len(graph.senders)

    def fn(first: int, outputs: Tensor) -> None:
        if "senders" not in out:
            out["senders"] = outputs.new_empty((n, *outputs.shape[1:]))
        out["senders"][first:first + outputs.shape[0]] = outputs.detach()
    return fn


@torch.no_grad()
def sender_run(model: nn.Module, graph: Graph, embeds: Float[Tensor, "batch pos d_model"], check: bool = True) -> SenderRun:
    """Every sender's output, the final logits and the residual stream each layer reads on ``embeds``; with ``check``,
    the decomposition check.

    Raises:
        ConfigError: the final norm's input differs from the sum of the sender outputs plus ``o_proj`` biases (an
            architecture that scales or normalises its residual stream in a way the graph does not model).
    """
    out: dict[str, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def grab(r: int, x: Tensor) -> Tensor:
        rec = graph.receiver_nodes[r]
        if rec.kind in ("attn", "q", "logits") and not rec.head:  # the stream each layer (and the final norm) reads
            resid[rec.layer] = x.detach()
        return x

    with edge_hooks(model, graph, sender_collector(graph, out), grab):
        logits = final_logits(model, embeds)
    stream = torch.stack([resid[i] for i in range(graph.n_layers + 1)])
    if check:
        x = stream[-1].float()
        total = out["senders"].float().sum(0) + _bias_total(model, graph, stream[-1])
        err = float((x - total).abs().max())
        tol = (1e-3 if x.dtype == torch.float32 and out["senders"].dtype == torch.float32 else 3e-2) * (1.0 + float(x.abs().max()))
        if not err <= tol:
            raise ConfigError(f"the logits' input is not the sum of the graph's sender outputs (max |difference| {err:.3g}): "
                              "this architecture scales or normalises its residual stream in a way edge attribution "
                              "patching does not model")
    return SenderRun(out["senders"], logits, stream)


def prepare(model: nn.Module | Any, clean_ids: Any, corrupt_ids: Any, metric: Any,
            receivers: str = "layer") -> tuple[Any, Graph, Tensor, Tensor]:
    """The checks every edge method makes before any forward pass: ``(side, graph, clean_ids, corrupt_ids)``.

    Raises:
        ConfigError: not a model / Side, ids that are not ``[batch, pos]`` token ids or whose shapes differ (unequal
            prompt lengths), a metric that is not callable, an unknown ``receivers`` or an unsupported architecture.
    """
    from probes.patch_sites import as_id_pair, as_side, check_metric

    side = as_side(model)
    clean_ids, corrupt_ids = as_id_pair(clean_ids, corrupt_ids, side, ("clean_ids", "corrupt_ids"))
    check_metric(metric)
    return side, Graph.of(side.model, receivers), clean_ids, corrupt_ids


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``. Raises ConfigError naming ``name`` otherwise (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
