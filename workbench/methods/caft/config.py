"""CAFT configuration (Casademunt et al., "Steering Out-of-Distribution Generalization with Concept
Ablation Fine-Tuning", arXiv 2507.16795, 2025, §3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.errors import ConfigError


@dataclass
class CaftConfig:
    """Where CAFT ablates and how many directions per layer.

    The directions themselves are tensors (buffers of :class:`~workbench.methods.caft.CaftIntervention`,
    saved in safetensors), not config; the config only fixes their shapes so that a saved ablation can
    be rebuilt by :func:`workbench.methods.load_intervention`.

    Attributes:
        layers: block indices whose residual output (``blocks.{l}.hook_resid_post``) is ablated.
        n_directions: directions per layer, ``k_l`` (one count per entry of ``layers``, or one int for every layer), each >= 1.
        source: free-text provenance of the directions, e.g. ``"pca[3,7,12]"``, ``"random seed=0"``,
            ``"probe"``; recorded in ``adapter.json`` for the reader, never interpreted.
        inner: the registered method trained under the ablation by ``finetune("caft", ...)``
            (:func:`~workbench.methods.caft.caft_trainer`); the paper uses full fine-tuning on toy tasks.
        inner_config: that method's config fields.
        directions_file: safetensors file with the bases ``q_{layer}`` ([d_model, k_l]) for the registry
            trainer, as written by :func:`~workbench.methods.caft.save_directions`.

    Raises:
        ConfigError: no layers, repeated or negative layers, a length mismatch, a count < 1, or
            ``inner == "caft"``.
    """

    layers: list[int] = field(default_factory=list)
    n_directions: int | list[int] = field(default_factory=list)
    source: str = ""
    inner: str = "lofit"
    inner_config: dict[str, Any] = field(default_factory=dict)
    directions_file: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.n_directions, int):
            self.n_directions = [self.n_directions] * len(self.layers)
        self.layers = [int(l) for l in self.layers]
        self.n_directions = [int(k) for k in self.n_directions]
        if not self.layers:
            raise ConfigError("CaftConfig.layers is empty; name at least one layer whose residual output to ablate")
        if len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ConfigError(f"CaftConfig.layers must be distinct non-negative ints, got {self.layers}")
        if len(self.n_directions) != len(self.layers):
            raise ConfigError(f"CaftConfig.n_directions has {len(self.n_directions)} entries for {len(self.layers)} layers; "
                              "give one count per layer (or a single int)")
        if min(self.n_directions) < 1:
            raise ConfigError(f"CaftConfig.n_directions must all be >= 1, got {self.n_directions}")
        if self.inner == "caft":
            raise ConfigError("CaftConfig.inner must be the method trained under the ablation, not 'caft' itself")
        self.inner_config = dict(self.inner_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
