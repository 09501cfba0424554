"""LoRA settings (peft ``LoraConfig``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from workbench.errors import ConfigError


@dataclass
class LoraMethodConfig:
    """LoRA settings (peft ``LoraConfig``): rank ``r``, scaling ``alpha / r``, target module names.

    Raises:
        ConfigError: ``r < 1``, ``alpha <= 0`` or no target modules.
    """

    r: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if int(self.r) < 1 or self.alpha <= 0 or not self.target_modules:
            raise ConfigError(f"LoraMethodConfig needs r >= 1, alpha > 0 and target modules, got {asdict(self)}")
