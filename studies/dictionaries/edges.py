"""The study's edge-level part: EAP and EAP-IG on entity tracking for the base and a fine-tune, each checked against
exact edge patching on a sample of edges, faithfulness curves against size-matched random edge sets, and the edges the
fine-tune gained or lost (:mod:`probes.edges`; Syed et al. 2023, Hanna et al. 2024; METHODS.md "Edge attribution
patching").

Prompts: held-out entity-tracking prompts with ``n_boxes`` boxes (one token length, so no padding); corrupt prompts:
the task's random counterfactuals (:mod:`workbench.tasks.entity_tracking.counterfactuals`); metric: the logit
difference between the queried box's object and the largest other object (Prakash et al. 2024 §2).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import NonNegativeInt, PositiveInt, check_fields
from workbench.errors import ConfigError
from workbench.runs import log_progress


@dataclass
class EdgesSettings:
    """``finetune``: the fine-tune compared with its base; ``n_prompts`` clean/corrupt pairs with ``n_boxes`` boxes;
    ``ig_steps``: EAP-IG's interpolation points; ``exact_sample``: edges patched exactly (half the top by |EAP-IG|, half
    drawn at random); ``curve_sizes``: circuit sizes of the faithfulness curve; ``random_seeds``: random edge sets per
    size; ``top_n``: the top edge sets compared between base and tuned; ``receivers``: ``"layer"`` or ``"head"``."""

    finetune: str = ""
    n_prompts: PositiveInt = 16
    n_boxes: PositiveInt = 3
    ig_steps: PositiveInt = 5
    exact_sample: NonNegativeInt = 60
    curve_sizes: list[PositiveInt] = field(default_factory=lambda: [5, 10, 20, 50, 100, 200, 400])
    random_seeds: NonNegativeInt = 5
    top_n: PositiveInt = 100
    receivers: str = "layer"
    seed: int = 0
    max_batch: PositiveInt = 16

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.finetune:
            raise ConfigError("edges.finetune must name the fine-tune whose edges are compared with the base's")
        if self.receivers not in ("layer", "head"):
            raise ConfigError(f"edges.receivers must be 'layer' or 'head', got {self.receivers!r}")


def entity_tracking_prompts(tokenizer: Any, s: EdgesSettings, prepend_bos: bool) -> tuple[Any, Any, Callable]:
    """``(clean_ids, corrupt_ids, metric)`` of ``n_prompts`` held-out prompts of one token length."""
    from probes import metrics as pm
    from workbench.tasks import entity_tracking as et
    from workbench.tasks.entity_tracking import counterfactuals as ecf

    split = et.generate(tokenizer, et.EntityTrackingConfig(n_boxes=s.n_boxes, n_train=1, n_heldout=4 * s.n_prompts, seed=s.seed),
                        prepend_bos=prepend_bos)
    length = Counter(p.length for p in split.heldout).most_common(1)[0][0]
    prompts = [p for p in split.heldout if p.length == length][: s.n_prompts]
    clean, answers, objects = et.to_tensors(prompts)
    pairs = ecf.make_pairs(tokenizer, prompts, "random", seed=s.seed)
    corrupt = et.to_tensors([c.counterfactual for c in pairs])[0]
    return clean, corrupt, pm.logit_diff(answers, objects)


def run_edges(base: str, tuned: str, s: EdgesSettings, out_dir: str | Path, log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """EAP / EAP-IG for base and tuned, their agreement with exact edge patching, faithfulness curves and the
    comparison; returns the JSON-ready record (also ``out_dir/edges.json``)."""
    import torch

    from probes.edges import eap, eap_ig, edge_patch_effects, faithfulness_curve, sample_edges, score_correlation
    from probes.edges.compare import compare_scores
    from probes.patch_sites import Side
    from workbench.artifacts import atomic_write_json
    from workbench.models.tuned import load_pair

    out = Path(out_dir)
    pair = load_pair(base, tuned).pair
    clean, corrupt, metric = entity_tracking_prompts(pair.tokenizer, s, pair.prepend_bos)
    record: dict[str, Any] = {"n_prompts": int(clean.shape[0]), "prompt_tokens": int(clean.shape[1]), "ig_steps": s.ig_steps,
                              "receivers": s.receivers, "correlation": {}, "faithfulness": {}, "timing_s": {}}
    scores = {}
    for name in ("base", "tuned"):
        side = Side.of(pair, name)
        t0 = time.time()
        ig = eap_ig(side, clean, corrupt, metric, steps=s.ig_steps, receivers=s.receivers, max_batch=s.max_batch)
        t1 = time.time()
        plain = eap(side, clean, corrupt, metric, receivers=s.receivers, max_batch=s.max_batch)
        t2 = time.time()
        scores[name] = ig
        edges = sample_edges(ig, s.exact_sample // 2, s.exact_sample - s.exact_sample // 2, seed=s.seed)
        exact = edge_patch_effects(side, edges, clean, corrupt, metric, receivers=s.receivers, max_batch=s.max_batch).mean(1)
        t3 = time.time()
        record["correlation"][name] = {"n_edges": len(edges),
                                       "eap": score_correlation(torch.tensor([plain.score(e) for e in edges]), exact),
                                       "eap_ig": score_correlation(torch.tensor([ig.score(e) for e in edges]), exact)}
        curve = faithfulness_curve(side, ig, clean, corrupt, metric, n_edges=[n for n in s.curve_sizes if n <= ig.graph.n_edges],
                                   n_random=s.random_seeds, seed=s.seed, max_batch=s.max_batch)
        c = curve.to_dict()
        record["faithfulness"][name] = {"sizes": c["n_edges"], "top": c["recovered"], "random_mean": c["random_mean"],
                                        "random_std": c["random_std"], "clean_metric": c["clean_metric"],
                                        "corrupt_metric": c["corrupt_metric"], "n_total_edges": c["n_total_edges"]}
        record["timing_s"][name] = {"eap_ig_s": t1 - t0, "eap_s": t2 - t1, "exact_s": t3 - t2, "faithfulness_s": time.time() - t3}
        r = record["correlation"][name]
        log(f"      {name}: clean {ig.clean_metric:.2f} / corrupt {ig.corrupt_metric:.2f} nats; vs exact on {len(edges)} edges: "
            f"EAP r={r['eap']['pearson']:.3f}, EAP-IG r={r['eap_ig']['pearson']:.3f}")
    cmp_ = compare_scores(scores["base"], scores["tuned"], s.top_n)
    d = cmp_.to_dict()
    record["comparison"] = {"top_n": s.top_n, "n_shared": len(d["shared"]), "n_gained": len(d["gained"]), "n_lost": len(d["lost"]),
                            "gained": d["gained"][:20], "lost": d["lost"][:20], "largest_changes": d["largest_changes"],
                            "base_metric": d["base_metric"], "tuned_metric": d["tuned_metric"]}
    atomic_write_json(out / "edges.json", record)
    return record
