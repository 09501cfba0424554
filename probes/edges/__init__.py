"""Edge attribution patching over a graph of embeddings, attention heads, MLPs and logits.

* :mod:`.graph` — :class:`Graph`: senders, receivers, edges ``"u->v"`` and the architecture check;
* :mod:`.run` — the hooks (sender outputs, receiver inputs rewritten through forward pre-hooks on the receivers' norms);
* :mod:`.eap` — :func:`eap` (Syed et al. 2023) and :func:`eap_ig` (Hanna et al. 2024): :class:`EdgeScores`;
* :mod:`.patching` — exact edge patching: :func:`patch_edges`, :func:`edge_patch_effects`, :func:`edge_patch_effect`;
* :mod:`.faithfulness` — :func:`faithfulness_curve`: the share of the clean − corrupt gap the top-n edges recover,
  beside size-matched random edge sets;
* :mod:`.compare` — :func:`compare_pair`: base vs tuned scores of a :class:`~workbench.pair.ModelPair`.
"""

from probes.edges.compare import (
    EdgeComparison,
    compare_pair,
    comparison_figures,
    score_correlation,
)
from probes.edges.eap import EdgeScores, eap, eap_ig, sample_edges
from probes.edges.faithfulness import FaithfulnessCurve, faithfulness_curve
from probes.edges.graph import Graph, check_architecture
from probes.edges.patching import edge_patch_effect, edge_patch_effects, patch_edges

__all__ = ["EdgeComparison", "EdgeScores", "FaithfulnessCurve", "Graph", "check_architecture", "compare_pair",
           "comparison_figures", "eap", "eap_ig", "edge_patch_effect", "edge_patch_effects", "faithfulness_curve",
           "patch_edges", "sample_edges", "score_correlation"]
