"""The entity-tracking circuit in the four groups of Prakash et al. (ICLR 2024, §3), found by path patching.

Going backwards from the logits (clean = original prompts, corrupt = unrelated ``"random"`` counterfactuals,
metric = logit difference of the original answer against the prompt's other objects, nats):

A. **value fetchers** — heads at the last token whose output reaches the logits (sender → ``"logits"``);
B. **position transmitters** — heads at the last token whose output reaches A's queries (→ A ``hook_q`` at -1);
C. **position detectors** — heads at the query-label token (``pos=-3``, the " C" of "Box C contains the") whose
   output reaches B's values there (→ B ``hook_v`` at -3);
D. **structure readers** — heads at the earlier mention of the query label (the context's " C", a per-prompt
   position named ``"query_label"``) whose output reaches C's values there (→ C ``hook_v`` at ``"query_label"``).

Each group keeps the ``k`` heads with the most negative effect. Senders may be pre-ranked by attribution patching
(one forward + backward for all group positions) and only the top ``candidates`` path-patched — the paper patches
every head; the pre-ranking is our approximation for CPU budgets, and its agreement with exact patching is
measured separately by the study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from probes.patch_sites import Side, head_sites
from probes.patching import HeadScores, Metric, attribution_patch
from probes.path_patching import path_patch, path_patch_runs
from workbench.architecture import Dims
from workbench.runs import log_progress
from workbench.sites import Site

GROUPS = ("value_fetchers", "position_transmitters", "position_detectors", "structure_readers")
GROUP_POS: dict[str, int | str] = {"value_fetchers": -1, "position_transmitters": -1, "position_detectors": -3,
                                   "structure_readers": "query_label"}


@dataclass
class Circuit:
    """Head groups (Sites at their positions) and each group's path-patching scores ``[n_layers, n_heads]``."""

    groups: dict[str, list[Site]]
    scores: dict[str, HeadScores] = field(default_factory=dict)

    def sites(self) -> list[Site]:
        """All sites, without duplicates (a head may sit in two groups at two positions)."""
        return list(dict.fromkeys(s for g in self.groups.values() for s in g))

    def to_dict(self) -> dict:
        return {"groups": {g: [[s.layer, s.head] for s in v] for g, v in self.groups.items()},
                "positions": {g: GROUP_POS[g] for g in self.groups},
                "scores": {g: [[None if math.isnan(v) else v for v in row] for row in s.scores.tolist()]
                           for g, s in self.scores.items()}}  # None: a head that was not path-patched


def _kv(site: Site, dims: Dims, pos: int | str) -> Site:
    return Site(site.layer, "attn.hook_v", head=site.head // (dims.n_heads // dims.n_kv_heads), pos=pos)


def find_circuit(side: Side, clean: Tensor, corrupt: Tensor, metric: Metric, positions: dict[str, Tensor],
                 sizes: dict[str, int], candidates: int | None = None, max_batch: int = 256, log=log_progress) -> Circuit:
    """Path-patch the four groups in order (each group's receivers are the previous group's heads); the clean and
    corrupt runs are computed once (:func:`probes.path_patching.path_patch_runs`) and shared by the four groups."""
    dims = Dims.of(side.model)
    circuit = Circuit({})
    receivers: object = "logits"
    runs = path_patch_runs(side, clean, corrupt)  # the unpatched runs, shared by the four groups' path patching
    attr: dict[int | str, Tensor] = {}
    if candidates is not None and candidates < dims.n_layers * dims.n_heads:
        # one forward + backward ranks every head at every group position (masks differ, the pass is the same)
        where = list(dict.fromkeys(GROUP_POS.values()))
        scores = attribution_patch(side, [s for p in where for s in head_sites(dims, pos=p)], clean, corrupt, metric,
                                   positions=positions).mean(1)
        attr = dict(zip(where, scores.split(dims.n_layers * dims.n_heads)))
    for group in GROUPS:
        pos = GROUP_POS[group]
        senders = head_sites(dims, pos=pos)
        if group == "position_transmitters":
            fetchers = {(s.layer, s.head) for s in circuit.groups["value_fetchers"]}
            senders = [s for s in senders if (s.layer, s.head) not in fetchers]
        if candidates is not None and candidates < len(senders):
            ranked = attr[pos][[s.layer * dims.n_heads + s.head for s in senders]]
            senders = [senders[i] for i in ranked.argsort()[:candidates].tolist()]
        effects = path_patch(side, senders, receivers, clean, corrupt, metric, positions=positions,
                             max_batch=max_batch, runs=runs).mean(1)
        grid = torch.full((dims.n_layers, dims.n_heads), float("nan"))
        for s, e in zip(senders, effects.tolist()):
            grid[s.layer, s.head] = e
        scores = HeadScores(grid, "Δ logit difference (nats)")
        order = effects.argsort()[: sizes[group]].tolist()
        circuit.groups[group] = [senders[i] for i in order]
        circuit.scores[group] = scores
        log(f"      {group}: {[(s.layer, s.head) for s in circuit.groups[group]]} "
            f"(effects {[round(effects[i].item(), 3) for i in order]})")
        if group == "value_fetchers":
            receivers = [Site(s.layer, "attn.hook_q", head=s.head, pos=-1) for s in circuit.groups[group]]
        elif group == "position_transmitters":
            receivers = list(dict.fromkeys(_kv(s, dims, -3) for s in circuit.groups[group]))
        elif group == "position_detectors":
            receivers = list(dict.fromkeys(_kv(s, dims, "query_label") for s in circuit.groups[group]))
    return circuit
