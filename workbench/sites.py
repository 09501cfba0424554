"""Sites: where an intervention or a probe acts, named with TransformerLens hook names.

A :class:`Site` is the one currency that every method and probe speaks. Its ``hook_name`` is the
TransformerLens name (``blocks.{layer}.{hook}``), so the same Site addresses the TransformerBridge's
hook point and, through :func:`workbench.hooked.resolve_module`, the Hugging Face module our own
hook path attaches to.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError

#: Hooks a Site may name, with the activation layout each carries.
#: ``hook_z``: [batch, pos, n_heads, d_head] — each query head's output before ``W_O``.
#: ``hook_resid_pre`` / ``hook_resid_post``: [batch, pos, d_model] — the residual stream.
#: ``hook_attn_out`` / ``hook_mlp_out``: [batch, pos, d_model] — a sublayer's write to the residual.
#: ``mlp.hook_post``: [batch, pos, d_mlp] — MLP neuron activations (after the gate, before ``W_out``).
#: ``attn.hook_q`` / ``hook_k`` / ``hook_v``: a head's query / key / value input (the ``q_proj`` / ``k_proj`` /
#: ``v_proj`` outputs, before rotary embedding); keys and values have ``n_kv_heads`` heads (grouped-query
#: attention shares one key / value head among ``n_heads // n_kv_heads`` query heads).
SITE_HOOKS: dict[str, str] = {
    "attn.hook_z": "batch pos n_heads d_head",
    "hook_resid_pre": "batch pos d_model",
    "hook_resid_post": "batch pos d_model",
    "hook_attn_out": "batch pos d_model",
    "hook_mlp_out": "batch pos d_model",
    "mlp.hook_post": "batch pos d_mlp",
    "attn.hook_q": "batch pos n_heads d_head",
    "attn.hook_k": "batch pos n_kv_heads d_head",
    "attn.hook_v": "batch pos n_kv_heads d_head",
}

#: Hooks whose activation has a head axis (``head=`` may name one of them).
HEAD_HOOKS: frozenset[str] = frozenset({"attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v"})


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: ``Site(3, "attn.hook_z", head=5).hook_name == "blocks.3.attn.hook_z"``.

    Args:
        layer: block index, 0-based.
        hook: one of :data:`SITE_HOOKS` (TransformerLens names without the ``blocks.{l}.`` prefix).
        head: optional head index (only for the head hooks: ``attn.hook_z`` / ``hook_q`` query heads,
            ``attn.hook_k`` / ``hook_v`` key-value heads).
        neuron: optional MLP neuron index (only for ``mlp.hook_post``).
        pos: optional token position: an int (``None`` = all positions; negative counts from the end) or the
            name of a per-prompt position that the caller supplies (e.g. ``"query_label"``; see
            :func:`probes.patch_sites.site_mask`), so no position is ever hard-coded.

    Raises:
        ConfigError: unknown hook, negative layer, or a head / neuron on a hook that has none.
    """

    layer: int
    hook: str
    head: int | None = None
    neuron: int | None = None
    pos: int | str | None = None

    def __post_init__(self) -> None:
        if self.hook not in SITE_HOOKS:
            raise ConfigError(f"unknown hook {self.hook!r}; known hooks: {sorted(SITE_HOOKS)}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ConfigError(f"layer must be a non-negative int, got {self.layer!r}")
        if self.head is not None and self.hook not in HEAD_HOOKS:
            raise ConfigError(f"head= only applies to {sorted(HEAD_HOOKS)}, not {self.hook!r}")
        if self.pos is not None and (isinstance(self.pos, bool) or not isinstance(self.pos, (int, str))):
            raise ConfigError(f"pos must be an int, a position name or None, got {self.pos!r}")
        if self.neuron is not None and self.hook != "mlp.hook_post":
            raise ConfigError(f"neuron= only applies to 'mlp.hook_post', not {self.hook!r}")

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook name, e.g. ``blocks.3.attn.hook_z``."""
        return f"blocks.{self.layer}.{self.hook}"

    def validate(self, n_layers: int, n_heads: int | None = None, d_mlp: int | None = None,
                 n_kv_heads: int | None = None) -> None:
        """Check this Site exists in a model with the given shape.

        Raises:
            ConfigError: layer, head or neuron index out of range (the message gives the range).
        """
        if self.layer >= n_layers:
            raise ConfigError(f"{self}: layer {self.layer} does not exist (model has layers 0..{n_layers - 1})")
        heads = n_kv_heads if self.hook in ("attn.hook_k", "attn.hook_v") and n_kv_heads is not None else n_heads
        if self.head is not None and heads is not None and not 0 <= self.head < heads:
            raise ConfigError(f"{self}: head {self.head} out of range (model has heads 0..{heads - 1} at {self.hook})")
        if self.neuron is not None and d_mlp is not None and not 0 <= self.neuron < d_mlp:
            raise ConfigError(f"{self}: neuron {self.neuron} out of range (d_mlp = {d_mlp})")

    def __str__(self) -> str:
        extra = "".join(
            f"[{k}={v}]" for k, v in (("head", self.head), ("neuron", self.neuron), ("pos", self.pos)) if v is not None
        )
        return self.hook_name + extra
