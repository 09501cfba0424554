"""Hooked models: Site -> Hugging Face module (our hook path), TransformerBridge and nnsight wrappers.

Two ways to act on a model, both addressed by :class:`~workbench.sites.Site`:

* **Our hook path** (:func:`add_hook`): a plain PyTorch hook on the Hugging Face module that carries the
  Site's activation (``attn.hook_z`` is the input of ``o_proj``, ``mlp.hook_post`` the input of
  ``down_proj``, ``hook_resid_post`` the output of a decoder layer, ...). It is what training uses: one
  hook per touched module, nothing else in the forward pass changes.
* **TransformerLens** (:func:`to_bridge`): ``TransformerBridge.boot_transformers`` wraps the same
  Hugging Face model for ``run_with_cache`` and TransformerLens hook names. Booting a bridge replaces
  submodules of the Hugging Face model in place with bridge components that call the originals;
  :func:`resolve_module` unwraps them, so our hooks keep working on a bridged model.
* **nnsight** (:func:`to_nnsight`): ``nnsight.TransformersModel`` for tracing (and remote execution of
  large models).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workbench.errors import ConfigError
from workbench.sites import HEAD_HOOKS, Site

ActivationFn = Callable[[Tensor], Tensor | None]


#: TransformerLens hook -> (submodule of a decoder layer, "input" or "output" of it).
SITE_MODULES: dict[str, tuple[str, str]] = {
    "attn.hook_z": ("self_attn.o_proj", "input"),
    "mlp.hook_post": ("mlp.down_proj", "input"),
    "hook_resid_pre": ("", "input"),
    "hook_resid_post": ("", "output"),
    "hook_attn_out": ("self_attn", "output"),
    "hook_mlp_out": ("mlp", "output"),
    "attn.hook_q": ("self_attn.q_proj", "output"),
    "attn.hook_k": ("self_attn.k_proj", "output"),
    "attn.hook_v": ("self_attn.v_proj", "output"),
}


def head_dim(model: nn.Module) -> int:
    """``d_head`` of a Hugging Face decoder (``config.head_dim``, else ``hidden_size // num_attention_heads``)."""
    c = unwrap(model).config
    return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


def unwrap(module: nn.Module) -> nn.Module:
    """Return the original Hugging Face module inside a TransformerBridge component (if any)."""
    while isinstance(getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama / Qwen / Gemma / Mistral-style causal LM.

    Raises:
        ConfigError: the architecture does not keep its decoder layers at ``model.layers``.
    """
    inner = getattr(unwrap(model), "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"{type(model).__name__}: cannot find decoder layers at model.model.layers; "
            "supported families are Llama, Qwen2, Gemma, Mistral (decoder layers with self_attn.o_proj "
            "and mlp.down_proj)"
        )
    return layers


def resolve_module(model: nn.Module, site: Site) -> tuple[nn.Module, str]:
    """Map a Site to ``(module, kind)`` where kind is ``"input"`` or ``"output"`` of that module.

    On a bridged model the module returned is the bridge component (e.g. the ``LinearBridge`` around
    ``o_proj``): a hook on its input runs before the bridge's own hook point, so the bridge's cache of
    ``blocks.{l}.attn.hook_z`` / ``mlp.hook_post`` / ``hook_resid_pre`` shows the intervened activation.
    For output sites the bridge's cache of that same hook shows the value before our change; everything
    downstream sees the change. Use :func:`unwrap` to reach the Hugging Face module (e.g. for weights).

    Raises:
        ConfigError: the layer does not exist or the module is missing.
    """
    layers = decoder_layers(model)
    if site.layer >= len(layers):
        raise ConfigError(f"{site}: layer {site.layer} does not exist (model has layers 0..{len(layers) - 1})")
    layer = layers[site.layer]
    path = SITE_MODULES[site.hook]
    module = layer
    for part in filter(None, path[0].split(".")):
        child = getattr(unwrap(module), part, None)
        if not isinstance(child, nn.Module):
            raise ConfigError(f"{site}: {type(unwrap(layer)).__name__} has no submodule {path[0]!r}")
        module = child
    return module, path[1]


def _swap_first(value: Any, new: Tensor) -> Any:
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    raise TypeError(f"cannot replace activation inside {type(value).__name__}")


def _first(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else value[0]


def add_hook(model: nn.Module, site: Site, fn: ActivationFn, n_heads: int | None = None) -> RemovableHandle:
    """Register ``fn`` on the module carrying ``site``'s activation; return the removable handle.

    ``fn`` receives the activation in the Site's TransformerLens layout (``attn.hook_z`` / ``hook_q`` as
    ``Float[Tensor, "batch pos n_heads d_head"]``, ``attn.hook_k`` / ``hook_v`` with ``n_kv_heads``, residual sites as ``"batch pos d_model"``,
    ``mlp.hook_post`` as ``"batch pos d_mlp"``) and returns a replacement of the same shape, or ``None``
    to leave it unchanged (a read-only hook). Callers should prefer :meth:`Intervention.attach`, which
    guarantees removal.

    Raises:
        ConfigError: unknown layer / module, or ``n_heads`` missing for an ``attn.hook_z`` site.
    """
    module, kind = resolve_module(model, site)
    if site.hook in HEAD_HOOKS:
        split = (n_heads, -1) if n_heads is not None and site.hook == "attn.hook_z" else (-1, head_dim(model))

        def to_site(x: Tensor) -> Tensor:
            return x.unflatten(-1, split)

        def from_site(x: Tensor) -> Tensor:
            return x.flatten(-2)
    else:
        to_site = from_site = lambda x: x  # noqa: E731

    if kind == "input":
        def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                out = fn(to_site(args[0]))
                return None if out is None else ((from_site(out), *args[1:]), kwargs)
            out = fn(to_site(kwargs["hidden_states"]))
            return None if out is None else (args, {**kwargs, "hidden_states": from_site(out)})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_mod: nn.Module, _args: tuple, output: Any) -> Any:
        out = fn(to_site(_first(output)))
        return None if out is None else _swap_first(output, from_site(out))

    return module.register_forward_hook(post_hook)


def hook_count(model: nn.Module) -> int:
    """Number of forward (pre-)hooks registered on all modules of ``model`` (for leak checks)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def to_bridge(model: nn.Module, tokenizer: Any, name_or_path: str) -> Any:
    """Wrap a loaded Hugging Face model as a TransformerLens ``TransformerBridge`` (no reload).

    The bridge exposes TransformerLens hook names (``blocks.{l}.attn.hook_z``, ``hook_resid_post`` ...)
    and ``run_with_cache``. Its attention runs eagerly; load the Hugging Face model with
    ``attn_implementation="eager"`` (as :func:`workbench.models.load_model` does) for identical logits.
    Note: booting replaces submodules of ``model`` in place with bridge components.
    """
    from transformer_lens.model_bridge import TransformerBridge

    device = next(model.parameters()).device
    return TransformerBridge.boot_transformers(
        name_or_path, hf_model=model, tokenizer=tokenizer, device=device, dtype=next(model.parameters()).dtype
    )


def to_nnsight(model: nn.Module, tokenizer: Any) -> Any:
    """Wrap a loaded Hugging Face model as an ``nnsight.TransformersModel`` (tracing, remote runs)."""
    import nnsight

    return nnsight.TransformersModel(model, tokenizer=tokenizer)


def nnsight_site(nn_model: Any, site: Site) -> Any:
    """The nnsight proxy of ``site`` inside a ``with nn_model.trace(...)`` block.

    ``attn.hook_z`` and ``mlp.hook_post`` are the (flat) inputs of ``o_proj`` / ``down_proj``:
    ``[batch, pos, n_heads * d_head]`` and ``[batch, pos, d_mlp]``; residual sites are module outputs.
    nnsight requires sites to be requested in the order the forward pass reaches them.
    """
    path, kind = SITE_MODULES[site.hook]
    envoy = nn_model.model.layers[site.layer]
    for part in filter(None, path.split(".")):
        envoy = getattr(envoy, part)
    if kind == "input":
        return envoy.input
    return envoy.output[0] if site.hook == "hook_attn_out" else envoy.output

