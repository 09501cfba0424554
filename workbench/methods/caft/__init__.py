"""CAFT: Concept Ablation Fine-Tuning (Casademunt et al., arXiv 2507.16795, 2025).

Project unwanted-concept directions out of the residual stream while another method fine-tunes, then
remove the ablation and evaluate the plain model. ``CaftIntervention`` is the ablation (registered as
``"caft"``; directions are buffers saved in safetensors), ``train_caft`` runs an inner method (any
registered method, e.g. LoFiT or full fine-tuning, or a trainable intervention) under it,
``caft_trainer`` is the same for ``finetune("caft", ...)``, and ``directions`` finds what to ablate.
"""

from workbench.methods import register_method
from workbench.methods.caft.config import CaftConfig
from workbench.methods.caft.directions import (
    ComponentChoice,
    PcaResult,
    choose_concept_components,
    component_scores,
    difference_of_means,
    pca_directions,
    probe_direction,
    random_directions,
    residuals,
)
from workbench.methods.caft.intervention import CaftIntervention, orthonormalize
from workbench.methods.caft.trainer import (
    CaftRun,
    caft_trainer,
    evaluate_with_ablation,
    load_directions,
    load_extras,
    save_directions,
    save_extras,
    train_caft,
)

register_method("caft", CaftConfig, CaftIntervention, trainer=caft_trainer, save_extras=save_extras, load_extras=load_extras)

__all__ = [
    "CaftConfig", "CaftIntervention", "CaftRun", "ComponentChoice", "PcaResult", "choose_concept_components",
    "component_scores", "difference_of_means", "evaluate_with_ablation", "orthonormalize", "pca_directions",
    "probe_direction", "random_directions", "residuals", "train_caft", "caft_trainer", "load_directions",
    "load_extras", "save_directions", "save_extras",
]
