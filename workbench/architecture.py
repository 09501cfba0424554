"""Architecture lookups: a model's dimensions and the named parts every probe needs, in one place.

Like tuned-lens's ``model_surgery.py``, every "where does this architecture keep X" question is answered
here and nowhere else: the decoder layers, the final norm, the unembedding (with Gemma-style final
logit soft-capping), each layer's attention output projection ``W_O`` and gated-MLP projections, and the
dimensions (:class:`Dims`) read from the Hugging Face config. Supported families: Llama, Qwen2, Gemma,
Mistral (decoder layers at ``model.layers`` with ``self_attn.o_proj`` and ``mlp.{gate,up,down}_proj``,
final norm at ``model.norm``, unembedding at ``lm_head``).

All lookups accept a plain Hugging Face model, one booted into a TransformerBridge (whose components wrap the
originals) or a peft ``PeftModel``; :func:`unwrap` reaches the Hugging Face modules. A projection may be a wrapper
rather than an ``nn.Linear`` (peft injects ``lora.Linear`` / IA3 / ... layers in place of the targets): :func:`w_o`,
:func:`head_writes` and :func:`proj_offset` then call the module, so whatever the wrapper adds is honoured.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.errors import ConfigError

#: The fields every Intervention needs (and every saved ``adapter.json`` has); older adapters lack the other two.
CORE_DIMS = ("n_layers", "n_heads", "d_head", "d_model", "d_mlp")


def unwrap(module: nn.Module) -> nn.Module:
    """Return the original Hugging Face module inside a TransformerBridge component, or the Hugging Face model inside a
    peft ``PeftModel`` / tuner model (with the adapter layers injected; prompt-learning models are left as they are)."""
    while True:
        if isinstance(getattr(module, "original_component", None), nn.Module):
            module = module.original_component
        elif (inner := _peft_inner(module)) is not None:
            module = inner
        else:
            return module


def _peft_inner(module: nn.Module) -> nn.Module | None:
    """The Hugging Face model a peft ``PeftModel`` (``.base_model.model``) or tuner (``.model``) wraps, else ``None``."""
    peft = sys.modules.get("peft")  # peft not imported: nothing can be a PeftModel
    tuner = getattr(getattr(getattr(peft, "tuners", None), "tuners_utils", None), "BaseTuner", None)
    if tuner is None:
        return None
    if isinstance(module, peft.PeftModel) and isinstance(module.base_model, tuner):
        return module.base_model.model
    return module.model if isinstance(module, tuner) else None


def text_config(model: nn.Module) -> Any:
    """The language model's config (``config.get_text_config()`` for multimodal wrappers)."""
    c = unwrap(model).config
    return c.get_text_config() if hasattr(c, "get_text_config") else c


def head_dim(model: nn.Module) -> int:
    """``d_head`` of a Hugging Face decoder (``config.head_dim``, else ``hidden_size // num_attention_heads``)."""
    c = text_config(model)
    return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


@dataclass(frozen=True)
class Dims:
    """A model's dimensions — the one description used by the library, the probes and saved adapters.

    ``n_kv_heads`` (key / value heads of grouped-query attention) and ``d_vocab`` are ``None`` when read from
    an adapter saved before they were recorded; a field is ``None`` only when unknown (:meth:`mismatches`
    skips it, :meth:`heads_at` assumes ``n_heads`` for an unknown ``n_kv_heads``).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int | None
    d_head: int
    d_model: int
    d_mlp: int
    d_vocab: int | None = None

    @classmethod
    def of(cls, model: nn.Module) -> Dims:
        """Read the dimensions from a Hugging Face causal LM's config (bridged models too).

        Raises:
            ConfigError: the config lacks ``num_hidden_layers`` / ``num_attention_heads`` / ``hidden_size``.
        """
        c = text_config(model)
        try:
            n_heads, d_model = int(c.num_attention_heads), int(c.hidden_size)
            n_layers = int(c.num_hidden_layers)
        except AttributeError as exc:
            raise ConfigError(f"{type(unwrap(model)).__name__}: config has no {exc.name!r}; supported families are "
                              "Llama, Qwen2, Gemma, Mistral") from exc
        return cls(n_layers=n_layers, n_heads=n_heads,
                   n_kv_heads=int(getattr(c, "num_key_value_heads", None) or n_heads),
                   d_head=int(getattr(c, "head_dim", None) or d_model // n_heads), d_model=d_model,
                   d_mlp=int(getattr(c, "intermediate_size", 0) or 4 * d_model),
                   d_vocab=int(c.vocab_size) if getattr(c, "vocab_size", None) else None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], required: Sequence[str] = CORE_DIMS) -> Dims:
        """Build from a mapping with at least the ``required`` keys (default :data:`CORE_DIMS`); extra keys such
        as a ``ModelInfo.to_dict()``'s ``id`` are ignored, absent ones are ``None``. A saved adapter's ``dims``
        works. Helpers that need only a few sizes pass a shorter ``required`` (e.g. NeFT's budget arithmetic).

        Raises:
            ConfigError: a required key is missing or a value is not an integer.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ConfigError(f"dims lack {missing} (need {list(required)}); got keys {sorted(d)}")
        try:
            vals = {k: None if d.get(k) is None else int(d[k]) for k in names}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"dims must be integers, got { {k: d.get(k) for k in names} }") from exc
        return cls(**vals)

    @classmethod
    def coerce(cls, dims: Dims | Mapping[str, Any] | Any, required: Sequence[str] = CORE_DIMS) -> Dims:
        """A :class:`Dims` from a Dims, anything with a ``.dims`` Dims (a ``ModelInfo``) or a mapping
        (:meth:`from_dict` with ``required``).

        Raises:
            ConfigError: as :meth:`from_dict`, or an object of another type.
        """
        if isinstance(dims, Dims):
            return dims
        if isinstance(getattr(dims, "dims", None), Dims):
            return dims.dims
        if isinstance(dims, Mapping):
            return cls.from_dict(dims, required)
        raise ConfigError(f"dims must be a Dims, a ModelInfo or a dict, got {type(dims).__name__}")

    def to_dict(self) -> dict[str, int]:
        """The known fields as a JSON-ready dict (``None`` fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def mismatches(self, other: Dims) -> dict[str, tuple[int, int]]:
        """``{field: (self, other)}`` for every field known on both sides that differs."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (a[k], b[k]) for k in a if a[k] is not None and b[k] is not None and a[k] != b[k]}

    def heads_at(self, hook: str) -> int:
        """Heads of a head hook: ``n_kv_heads`` at ``attn.hook_k`` / ``hook_v``, else ``n_heads``."""
        kv = hook in ("attn.hook_k", "attn.hook_v") and self.n_kv_heads is not None
        return self.n_kv_heads if kv else self.n_heads


# --- named parts ------------------------------------------------------------------------------------
_FAMILIES = "supported families are Llama, Qwen2, Gemma, Mistral"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama / Qwen / Gemma / Mistral-style causal LM.

    Raises:
        ConfigError: the architecture does not keep its decoder layers at ``model.layers``.
    """
    layers = getattr(getattr(unwrap(model), "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"{type(model).__name__}: cannot find decoder layers at model.model.layers; {_FAMILIES} "
            "(decoder layers with self_attn.o_proj and mlp.down_proj)"
        )
    return layers


def _layer(model: nn.Module, layer: int) -> nn.Module:
    layers = decoder_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
        raise ConfigError(f"layer {layer!r} does not exist (model has layers 0..{len(layers) - 1})")
    return unwrap(layers[layer])


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last residual stream before the unembedding (``model.norm``).

    Raises:
        ConfigError: the model keeps no final norm at ``model.model.norm``.
    """
    norm = getattr(getattr(unwrap(model), "model", None), "norm", None)
    if not isinstance(norm, nn.Module):
        raise ConfigError(f"{type(unwrap(model)).__name__}: cannot find the final norm at model.model.norm; {_FAMILIES}")
    return unwrap(norm)


def unembedding(model: nn.Module) -> nn.Module:
    """The unembedding (``lm_head``), a linear map ``d_model → d_vocab``.

    Raises:
        ConfigError: the model has no output embeddings.
    """
    hf = unwrap(model)
    head = getattr(hf, "lm_head", None)
    if not isinstance(head, nn.Module):
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(hf).__name__}: no unembedding at lm_head; {_FAMILIES}")
    return unwrap(head)


def logit_softcap(model: nn.Module) -> float | None:
    """Final logit soft-cap ``c`` (Gemma 2: ``logits = c · tanh(logits / c)``), or ``None`` when there is none."""
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None


def softcap(logits: Float[Tensor, "*rows d_vocab"], cap: float | None) -> Float[Tensor, "*rows d_vocab"]:
    """``cap · tanh(logits / cap)``, or ``logits`` unchanged when ``cap`` is ``None``."""
    return torch.tanh(logits / cap) * cap if cap else logits


def readout(model: nn.Module, resid: Float[Tensor, "*rows d_model"]) -> Float[Tensor, "*rows d_vocab"]:
    """Logits from a final residual stream: final norm, unembedding, then any logit soft-cap — what the
    model's own forward pass does after its last decoder layer (the logit lens applies it to any layer).

    Raises:
        ConfigError: as :func:`final_norm` / :func:`unembedding`.
    """
    return softcap(unembedding(model)(final_norm(model)(resid)), logit_softcap(model))


def o_proj(model: nn.Module, layer: int) -> nn.Module:
    """The attention output projection of ``layer`` (``self_attn.o_proj``; the module whose input is ``attn.hook_z``):
    an ``nn.Linear``, or a wrapper around one (a peft ``lora.Linear`` ...; see :func:`plain_linear`).

    Raises:
        ConfigError: the layer does not exist or has no ``self_attn.o_proj``.
    """
    attn = getattr(_layer(model, layer), "self_attn", None)
    proj = getattr(unwrap(attn), "o_proj", None) if isinstance(attn, nn.Module) else None
    if not isinstance(proj, nn.Module):
        raise ConfigError(f"layer {layer}: no self_attn.o_proj; {_FAMILIES}")
    return unwrap(proj)


def w_o(model: nn.Module, layer: int, head: int | None = None) -> Float[Tensor, "d_model n_heads_x_d_head"]:
    """``W_O`` of ``layer`` (``[d_model, n_heads * d_head]``), or with ``head`` that head's ``[d_model, d_head]`` column
    block. Not detached. A plain ``nn.Linear`` gives its ``weight`` (the parameter or a view of it); a wrapper (a peft
    LoRA layer: ``W + scaling · B A``) gives the effective weight it applies in its current state, computed as
    ``proj.forward(I) − proj.forward(0)`` (exact for any affine wrapper; adapters disabled → the base weight).

    Raises:
        ConfigError: as :func:`o_proj`, or a head index out of range.
    """
    proj = o_proj(model, layer)
    if plain_linear(proj) is not None:
        w = proj.weight
    else:
        d_in = Dims.of(model).n_heads * head_dim(model)
        like = _input_like(proj)
        w = (proj.forward(torch.eye(d_in, dtype=like.dtype, device=like.device)) - proj_offset(proj, d_in)).T
    if head is None:
        return w
    d = head_dim(model)
    n_heads = w.shape[1] // d
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
        raise ConfigError(f"head {head!r} out of range (layer {layer} has heads 0..{n_heads - 1})")
    return w[:, head * d:(head + 1) * d]


def plain_linear(module: nn.Module) -> nn.Linear | None:
    """``module`` when it is exactly an ``nn.Linear`` (``weight`` and ``bias`` are all it applies), else ``None``: a
    wrapper (peft ``lora.Linear``, a quantised or otherwise subclassed linear) must be called, not read."""
    return module if type(module) is nn.Linear else None


def _input_like(proj: nn.Module) -> Tensor:
    """A tensor with the dtype and device a projection's input has: its (base) ``weight`` (peft wrappers expose the
    base layer's), else its first parameter."""
    w = getattr(proj, "weight", None)
    return w if isinstance(w, Tensor) else next(proj.parameters())


def proj_offset(proj: nn.Module, d_in: int, like: Tensor | None = None) -> Float[Tensor, " d_out"]:
    """The constant term of a projection with ``d_in`` inputs: ``bias`` (or zeros) of a plain ``nn.Linear``,
    ``proj.forward(0)`` of a wrapper (the zero input in ``like``'s dtype and device; default: the projection's weight's).
    Not detached."""
    lin = plain_linear(proj)
    if lin is not None:
        return lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0])
    like = _input_like(proj) if like is None else like
    return proj.forward(torch.zeros(1, d_in, dtype=like.dtype, device=like.device))[0]


def head_writes(proj: nn.Module, z: Float[Tensor, "*rows n_heads_x_d_head"], n_heads: int
                ) -> Float[Tensor, "n_heads *rows d_out"]:
    """What each head writes through the output projection ``proj`` (``o_proj``), its constant term left out, so that
    ``head_writes(proj, z, n).sum(0) + proj_offset(proj, d_in) == proj(z)``.

    A plain ``nn.Linear``: ``z_h @ W_O[:, h-slice]ᵀ``. Any other module (a peft LoRA / DoRA / IA3 wrapper ...):
    ``proj.forward`` of ``z`` with every other head zeroed, minus :func:`proj_offset` — the effective ``W_O`` the
    wrapper applies in its current state (adapters on or off, merged or not), exact for any affine wrapper; for a
    wrapper that is not affine the sum above fails (callers check it). ``forward`` runs no hooks of ``proj`` itself, so
    this may be called from a hook on ``proj``. Costs ``n_heads`` projections of ``z``.

    Raises:
        ConfigError: the last axis of ``z`` is not a multiple of ``n_heads``; a wrapper in training mode with active
            dropout (each call would drop differently: call ``model.eval()``).
    """
    if z.shape[-1] % n_heads:
        raise ConfigError(f"o_proj input of width {z.shape[-1]} does not split into {n_heads} heads")
    zh = z.unflatten(-1, (n_heads, z.shape[-1] // n_heads))
    lin = plain_linear(proj)
    if lin is not None:
        w = lin.weight.view(lin.weight.shape[0], n_heads, -1)
        return torch.einsum("...hd,mhd->h...m", zh, w)
    if proj.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in proj.modules()):
        raise ConfigError(f"{type(proj).__name__} is in training mode with dropout; per-head outputs need a deterministic "
                          "projection: call model.eval() first")
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device).view(n_heads, *[1] * (z.dim() - 1), n_heads, 1)
    masked = (zh.unsqueeze(0) * eye).flatten(-2)  # [n_heads, *rows, d_in]: head h's block kept, the others zero
    return proj.forward(masked) - proj_offset(proj, z.shape[-1], z)


def mlp_projections(model: nn.Module, layer: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """``(gate_proj, up_proj, down_proj)`` of ``layer``'s gated MLP (the Hugging Face ``nn.Linear`` modules, or the
    wrappers peft injected in their place; unwrapped from TransformerBridge components): weights ``[d_mlp, d_model]``, ``[d_mlp, d_model]``,
    ``[d_model, d_mlp]``.

    Raises:
        ConfigError: the layer does not exist, or the MLP is not gated (no ``gate_proj`` / ``up_proj`` /
            ``down_proj``).
    """
    mlp = getattr(_layer(model, layer), "mlp", None)
    mlp = unwrap(mlp) if isinstance(mlp, nn.Module) else mlp
    mods = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(m, nn.Module) for m in mods):
        raise ConfigError(f"layer {layer}: {type(mlp).__name__} is not a gated MLP with gate_proj/up_proj/down_proj; "
                          f"{_FAMILIES}")
    return tuple(unwrap(m) for m in mods)  # type: ignore[return-value]
