"""The computational graph of edge attribution patching: senders, receivers and the edges between them.

Nodes (Syed, Rager, Conmy 2023 "Attribution Patching Outperforms Automated Circuit Discovery" §3; Hanna, Pezzelle,
Belinkov 2024 "Have Faith in Faithfulness" §2):

* **senders** write to the residual stream: ``embed`` (the token embeddings as they enter layer 0, after any
  architecture scaling), every attention head ``a{l}.h{h}`` (its ``hook_z`` times its ``[d_model, d_head]`` slice of
  ``W_O``) and every MLP ``m{l}`` (the MLP's output);
* **receivers** read it: each layer's attention input ``a{l}`` (the input of ``input_layernorm``: all heads' query,
  key and value together) — or, with ``receivers="head"``, each query head's query input ``a{l}.h{h}<q>`` and each
  key / value head's key and value inputs ``a{l}.h{g}<k>`` / ``a{l}.h{g}<v>`` (``g`` counts the ``n_kv_heads`` key /
  value heads of grouped-query attention); each MLP input ``m{l}`` (the input of ``post_attention_layernorm``); and
  ``logits`` (the input of the final norm).

An edge ``u->v`` exists when ``u`` writes before ``v`` reads: ``embed`` feeds every receiver, the heads of layer ``l``
feed ``m{l}`` and everything after, ``m{l}`` feeds layer ``l + 1`` onwards. Senders are ordered by when the forward
pass computes them, so each receiver's senders are a prefix of :attr:`Graph.senders` (:attr:`Graph.n_upstream`).

Projections may be ``nn.Linear`` or wrappers of one (peft LoRA and other adapters on ``q/k/v/o_proj`` and the MLP):
head outputs and per-head receiver slices then call the wrapper (:func:`workbench.architecture.head_writes`), so the
graph is that of the tuned model. A ``PeftModel`` is accepted as it is (:func:`workbench.architecture.unwrap`).

Supported: decoders whose layers are ``x + attn(input_layernorm(x))`` then ``x + mlp(post_attention_layernorm(x))``
with a final norm (Llama, Qwen2/3, Mistral, Gemma 1). Other norm placements (Gemma 2/3's extra norms, Olmo 2's
post-norms) are refused with one :class:`~workbench.errors.ConfigError`; :mod:`probes.edges.run` also checks on
every corrupt run that the logits' input equals the sum of all sender outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Bool
from torch import Tensor, nn

from workbench.architecture import Dims, decoder_layers, final_norm, unwrap
from workbench.errors import ConfigError

__all__ = ["RECEIVER_KINDS", "Graph", "Receiver", "check_architecture"]

#: ``receivers=`` values: one attention receiver per layer, or one per head and q / k / v input.
RECEIVER_KINDS = ("layer", "head")
_NORMS = ("input_layernorm", "post_attention_layernorm")
_SENDER = re.compile(r"^(embed|a(\d+)\.h(\d+)|m(\d+))$")


@dataclass(frozen=True)
class Receiver:
    """One receiver: ``kind`` is ``"attn"`` (a layer's whole attention input), ``"q"`` / ``"k"`` / ``"v"`` (one head's
    query, key or value input), ``"mlp"`` or ``"logits"``; ``head`` indexes query heads for ``"q"`` and key / value heads
    for ``"k"`` / ``"v"``; ``layer`` is ``n_layers`` for the logits."""

    name: str
    layer: int
    kind: str
    head: int | None = None


def check_architecture(model: nn.Module, receivers: str = "layer") -> None:
    """Refuse models whose residual stream is not the sum of the graph's sender outputs.

    Raises:
        ConfigError: no decoder layers / final norm, a layer without ``input_layernorm`` and ``post_attention_layernorm``
            or with other norms beside them (Gemma 2/3's ``pre_feedforward_layernorm`` ...), a missing ``self_attn.o_proj``
            or ``mlp`` (any module: a peft wrapper is fine), ``q_proj`` / ``k_proj`` / ``v_proj`` missing for per-head
            receivers, or an unknown ``receivers``.
    """
    if receivers not in RECEIVER_KINDS:
        raise ConfigError(f"receivers must be one of {RECEIVER_KINDS}, got {receivers!r}")
    final_norm(model)
    for i, layer in enumerate(decoder_layers(model)):
        layer = unwrap(layer)
        norms = sorted(n for n, _ in layer.named_children() if "norm" in n.lower())
        attn = getattr(layer, "self_attn", None)
        missing = [n for n in _NORMS if not isinstance(getattr(layer, n, None), nn.Module)]
        if missing or norms != sorted(_NORMS):
            raise ConfigError(
                f"{type(layer).__name__} (layer {i}) has norms {norms}; edge attribution patching needs exactly "
                f"{list(_NORMS)} before attention and MLP (Llama / Qwen2 / Mistral / Gemma 1 placement): other norm "
                "placements (Gemma 2/3, Olmo 2) are not supported")
        parts = ["o_proj"] + (["q_proj", "k_proj", "v_proj"] if receivers == "head" else [])
        if not isinstance(attn, nn.Module) or not isinstance(getattr(layer, "mlp", None), nn.Module) or any(
                not isinstance(getattr(unwrap(attn), p, None), nn.Module) for p in parts):
            raise ConfigError(f"layer {i}: edge attribution patching needs self_attn.{{{', '.join(parts)}}} and mlp")


@dataclass(frozen=True)
class Graph:
    """Senders, receivers and edges of one model (see the module docstring for the node names and edge rule).

    ``n_upstream[r]``: receiver ``r`` reads senders ``senders[:n_upstream[r]]``. :attr:`adjacency` is
    ``Bool[Tensor, "n_senders n_receivers"]``; edge names are ``"{sender}->{receiver}"``.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    receiver_kind: str = "layer"

    @classmethod
    def of(cls, model: nn.Module, receivers: str = "layer") -> Graph:
        """The graph of ``model`` (a Hugging Face causal LM, bridged or not).

        Raises:
            ConfigError: as :func:`check_architecture`.
        """
        check_architecture(model, receivers)
        d = Dims.of(model)
        return cls(d.n_layers, d.n_heads, d.n_kv_heads or d.n_heads, receivers)

    # --------------------------------------------------------------------------------------- nodes
    def head_sender(self, layer: int, head: int) -> int:
        """Index of ``a{layer}.h{head}`` in :attr:`senders`."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        """Index of ``m{layer}`` in :attr:`senders`."""
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    @cached_property
    def senders(self) -> tuple[str, ...]:
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return tuple(out)

    @cached_property
    def receiver_nodes(self) -> tuple[Receiver, ...]:
        out: list[Receiver] = []
        for layer in range(self.n_layers):
            if self.receiver_kind == "head":
                for kind, n in (("q", self.n_heads), ("k", self.n_kv_heads), ("v", self.n_kv_heads)):
                    out += [Receiver(f"a{layer}.h{h}<{kind}>", layer, kind, h) for h in range(n)]
            else:
                out.append(Receiver(f"a{layer}", layer, "attn"))
            out.append(Receiver(f"m{layer}", layer, "mlp"))
        return (*out, Receiver("logits", self.n_layers, "logits"))

    @cached_property
    def receivers(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.receiver_nodes)

    @cached_property
    def n_upstream(self) -> tuple[int, ...]:
        def n(r: Receiver) -> int:
            if r.kind == "logits":
                return len(self.senders)
            return self.mlp_sender(r.layer) if r.kind == "mlp" else self.head_sender(r.layer, 0)
        return tuple(n(r) for r in self.receiver_nodes)

    @cached_property
    def _sender_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.senders)}

    @cached_property
    def _receiver_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.receivers)}

    def sender_layer(self, s: int) -> int:
        """The layer of sender index ``s`` (``-1`` for ``embed``)."""
        return -1 if s == 0 else (s - 1) // (self.n_heads + 1)

    # --------------------------------------------------------------------------------------- edges
    @cached_property
    def adjacency(self) -> Bool[Tensor, "n_senders n_receivers"]:
        up = torch.tensor(self.n_upstream)
        return torch.arange(len(self.senders))[:, None] < up[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.adjacency.sum())

    def edges(self) -> list[str]:
        """Every edge name, receiver-major (receivers in forward order, then senders in forward order)."""
        return [f"{self.senders[s]}->{r}" for r, n in zip(self.receivers, self.n_upstream) for s in range(n)]

    def edge_index(self, edge: str) -> tuple[int, int]:
        """``(sender index, receiver index)`` of an edge name ``"{sender}->{receiver}"``.

        Raises:
            ConfigError: not a string of that form, an unknown sender or receiver, or a sender that does not write
                before the receiver reads (e.g. ``"m3->a2"``, ``"a1.h0->a1"``).
        """
        if not isinstance(edge, str) or edge.count("->") != 1:
            raise ConfigError(f"an edge is named '{{sender}}->{{receiver}}' (e.g. 'a0.h1->m2'), got {edge!r}")
        u, v = (p.strip() for p in edge.split("->"))
        if u not in self._sender_index:
            hint = " (senders: embed, a{l}.h{h}, m{l})" if not _SENDER.match(u) else " (out of range for this model)"
            raise ConfigError(f"edge {edge!r}: unknown sender {u!r}{hint}")
        if v not in self._receiver_index:
            kinds = "a{l}, m{l}, logits" if self.receiver_kind == "layer" else "a{l}.h{h}<q|k|v>, m{l}, logits"
            raise ConfigError(f"edge {edge!r}: unknown receiver {v!r} for receivers={self.receiver_kind!r} ({kinds})")
        s, r = self._sender_index[u], self._receiver_index[v]
        if s >= self.n_upstream[r]:
            raise ConfigError(f"edge {edge!r} does not exist: {u} is computed after {v} reads the residual stream")
        return s, r

    def edge_mask(self, edges: Iterable[str] | Tensor) -> Bool[Tensor, "n_senders n_receivers"]:
        """A boolean ``[n_senders, n_receivers]`` mask of ``edges`` (names, or a mask checked for shape and existence).

        Raises:
            ConfigError: as :meth:`edge_index`; a mask of the wrong shape or marking pairs that are not edges.
        """
        shape = (len(self.senders), len(self.receivers))
        if isinstance(edges, Tensor):
            if edges.dtype != torch.bool or tuple(edges.shape) != shape:
                raise ConfigError(f"an edge mask must be a bool tensor of shape {shape}, got {edges.dtype} "
                                  f"{tuple(edges.shape)}")
            if bool((edges & ~self.adjacency).any()):
                raise ConfigError("the edge mask marks sender/receiver pairs that are not edges (a sender after its receiver)")
            return edges.clone()
        if isinstance(edges, str):
            raise ConfigError(f"edges must be a list of edge names, got one string {edges!r} (wrap it: [{edges!r}])")
        mask = torch.zeros(shape, dtype=torch.bool)
        for e in edges:
            mask[self.edge_index(e)] = True
        return mask

    def edge_names(self, mask: Bool[Tensor, "n_senders n_receivers"]) -> list[str]:
        """Names of the edges ``mask`` marks, in :meth:`edges` order."""
        mask = self.edge_mask(mask)
        return [f"{self.senders[s]}->{self.receivers[r]}" for r, s in mask.T.nonzero().tolist()]

    def check_sets(self, edge_sets: Sequence[Iterable[str] | Tensor]) -> Bool[Tensor, "variant n_senders n_receivers"]:
        """Stack edge sets (each names or a mask) into ``[variant, n_senders, n_receivers]``.

        Raises:
            ConfigError: no sets, or a set as :meth:`edge_mask` refuses.
        """
        if isinstance(edge_sets, (str, Tensor)) or not len(edge_sets):
            raise ConfigError("edge_sets must be a non-empty list of edge sets (each a list of edge names or a mask)")
        return torch.stack([self.edge_mask(e) for e in edge_sets])
