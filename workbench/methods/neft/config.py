"""NeFT configuration (Xu, Zhan, Ma, Wong, Chao, "Let's Focus on Neuron: Neuron-Level Supervised
Fine-tuning for Large Language Model", COLING 2025, §3)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.config import NonNegativeFloat, PositiveFloat, PositiveInt, check_fields
from workbench.errors import ConfigError
from workbench.train import TrainConfig, as_train_config

#: Selection rules: lowest base/tuned cosine similarity first (the paper's NeFT), highest first (the
#: paper's "reversed" ablation), or uniformly random neurons (the random-neuron baseline).
SELECTION_MODES = ("low", "reversed", "random")


@dataclass
class NeftConfig:
    """NeFT settings.

    Attributes:
        budget_fraction: trainable parameters as a fraction of ALL model parameters, in (0, 1]
            (paper: 1.2 % on Llama-3.2-1B, 9 % on Llama-2-7b). One neuron of a gated MLP costs
            ``3 * d_model`` parameters (its gate row, up row and down column).
        selection: ``"low"`` (NeFT: lowest cosine similarity between base and briefly fine-tuned weights
            first), ``"reversed"`` (most similar first; the paper's ablation) or ``"random"`` (seeded by
            ``seed``; no brief fine-tuning is run).
        init_std: std of the N(0, init_std²) init of the weight deltas; 0 (default) starts exactly at
            the base model, as the paper does ("restart from the base model").
        neurons: the selected ``[layer, index]`` pairs the deltas live on (filled by selection).
        select_steps: optimizer steps of the brief full fine-tuning used for scoring (paper: an early
            checkpoint, "a few hundred steps").
        select_lr: AdamW learning rate of that brief full fine-tuning (paper: 2e-5, as full FT).
        select_batch_size: prompts per step of that brief full fine-tuning.
        seed: seed of the brief fine-tuning's batches and of the random selection.
        train: optimisation of the neuron deltas. Default lr 1e-3, NOT the paper's 2e-5: the paper trains
            full weights for thousands of steps on GPUs; our deltas start at 0 and get tens of steps on
            CPU, so a larger step is needed to move them measurably (AdamW steps are ≈ lr per scalar).

    Raises:
        ConfigError: a budget outside (0, 1], an unknown selection rule, a negative init std, or a
            non-positive selection step count / learning rate / batch size.
    """

    budget_fraction: float = 0.01
    selection: str = "low"
    init_std: NonNegativeFloat = 0.0
    neurons: list[list[int]] = field(default_factory=list)
    select_steps: PositiveInt = 50
    select_lr: PositiveFloat = 2e-5
    select_batch_size: PositiveInt = 8
    seed: int = 0
    train: TrainConfig | dict | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        b = self.budget_fraction
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not 0 < b <= 1:
            raise ConfigError(f"NeftConfig.budget_fraction must be a fraction of all model parameters in (0, 1], got {b!r} (1% is 0.01)")
        if self.selection not in SELECTION_MODES:
            raise ConfigError(f"NeftConfig.selection must be one of {list(SELECTION_MODES)}, got {self.selection!r}")
        try:
            self.neurons = [[int(layer), int(index)] for layer, index in self.neurons]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"NeftConfig.neurons must be a list of [layer, index] pairs ({exc})") from exc
        self.train = as_train_config(self.train, TrainConfig(max_steps=60, lr=1e-3))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
