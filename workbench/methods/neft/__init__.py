"""NeFT: neuron-level fine-tuning (Xu, Zhan, Ma, Wong, Chao, COLING 2025)."""

from workbench.methods import register_method
from workbench.methods.neft.config import SELECTION_MODES, NeftConfig
from workbench.methods.neft.intervention import NeftIntervention, export_hf, neuron_weights
from workbench.methods.neft.trainer import (
    NeftRun,
    brief_full_finetune,
    n_neurons_for_budget,
    neft_trainer,
    neuron_cost,
    score_neurons,
    select_neurons,
    train_neft,
)

register_method("neft", NeftConfig, NeftIntervention, trainer=neft_trainer)

__all__ = [
    "SELECTION_MODES", "NeftConfig", "NeftIntervention", "NeftRun", "brief_full_finetune", "export_hf",
    "n_neurons_for_budget", "neft_trainer", "neuron_cost", "neuron_weights", "score_neurons",
    "select_neurons", "train_neft",
]
