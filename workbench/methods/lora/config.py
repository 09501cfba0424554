"""LoRA settings (peft ``LoraConfig``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from workbench.config import NonNegativeFloat, PositiveFloat, PositiveInt, check_fields
from workbench.errors import ConfigError


@dataclass
class LoraMethodConfig:
    """LoRA settings (peft ``LoraConfig``): rank ``r``, scaling ``alpha / r``, target module names.

    Raises:
        ConfigError: ``r < 1``, ``alpha <= 0`` or no target modules.
    """

    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.target_modules:
            raise ConfigError(f"LoraMethodConfig needs target modules, got {asdict(self)}")
