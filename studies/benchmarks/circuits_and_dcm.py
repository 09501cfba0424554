"""Side-by-side timing of the entity-tracking study's circuit search, faithfulness and DCM, old way vs new, in one
process on the real model (``studies/entity_tracking``: its README has the measured table).

``python -m studies.benchmarks.circuits_and_dcm [--n-patch 10] [--candidates 60] [--n-dcm 32] [--dcm-steps 20]``

* **circuits** — the four-group path-patching search on the base model: the old way (per group: an attribution
  pass, the clean / corrupt / baseline runs recomputed by each ``path_patch`` call, every variant on the whole
  prompt with every head frozen at every position — the code before this change, kept here verbatim on today's
  engine) against :func:`studies.entity_tracking.circuit.find_circuit` (shared :class:`PathPatchRuns`, one
  attribution pass, variants only from the first sender / receiver position on).
* **faithfulness** — the committed base circuit and 10 random circuits, position-wise mean ablation of every other
  head: every variant on the whole prompt (``share_prefix=False``) against the prefix (positions before the circuit's
  first position, where every variant ablates every head) run once with that common ablation.
* **dcm** — the three desiderata × four groups of the committed default base circuit: one training loop per
  (group, desideratum) through the eager :func:`probes.dcm._mixed` (the old loop) against one
  :func:`probes.dcm.dcm_many` run.

Prints wall and CPU seconds of each (CPU / wall shows how contended the machine was), the speed-up, and the largest
difference in the numbers. Same prompts as the default study (seed 0, 3 boxes).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from probes import metrics as pm
from probes.circuits import faithfulness
from probes.dcm import DCMConfig, DCMTask, _mixed, _no_param_grads, dcm_many
from probes.patch_sites import Side, as_site_sets, head_sites, variant_masks
from probes.patching import (
    PatchLayer,
    _baseline,
    _effects,
    attribution_patch,
    cache,
    run_patched,
)
from studies.entity_tracking.circuit import GROUP_POS, GROUPS, _kv, find_circuit
from workbench.architecture import Dims
from workbench.sites import Site


def _old_path_patch(side, senders, receivers, target_ids, source_ids, metric, positions=None, max_batch=256):
    """``path_patch`` as it was before this change (clean / source / baseline per call, whole prompts)."""
    dims = Dims.of(side.model)
    sets = as_site_sets(senders)
    b, seq = target_ids.shape
    to_logits = isinstance(receivers, str)
    last = dims.n_layers if to_logits else max(r.layer for r in receivers)
    live = [i for i, s in enumerate(sets) if min(x.layer for x in s) < last]
    out = torch.zeros(len(sets), b)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(dims.n_layers)]
    clean = cache(side, target_ids, z_names)
    freeze = PatchLayer({n: torch.ones(1, 1, seq, dims.n_heads, dtype=torch.bool) for n in z_names}, clean)
    send_masks = variant_masks([sets[i] for i in live], b, seq, dims, positions)
    send = PatchLayer(send_masks, cache(side, source_ids, list(send_masks)))
    base = _baseline(side, target_ids, metric)
    if to_logits:
        logits, _ = run_patched(side, target_ids, [freeze, send], len(live), max_batch=max_batch)
        out[live] = _effects(logits, metric, base)
        return out
    recv_masks = variant_masks([list(receivers)], b, seq, dims, positions)
    per = max(1, max_batch // b)
    for c0 in range(0, len(live), per):
        idx = live[c0:c0 + per]
        sub = PatchLayer({n: m[c0:c0 + len(idx)] for n, m in send_masks.items()}, send.source)
        _, rec = run_patched(side, target_ids, [freeze, sub], len(idx), record=list(recv_masks), max_batch=max_batch)
        logits, _ = run_patched(side, target_ids, [PatchLayer(recv_masks, rec, per_variant=True)], len(idx),
                                max_batch=max_batch)
        out[idx] = _effects(logits, metric, base)
    return out


def _old_find_circuit(side, clean, corrupt, metric, positions, sizes, candidates, max_batch=256):
    dims = Dims.of(side.model)
    groups, effects_of, receivers = {}, {}, "logits"
    for group in GROUPS:
        pos = GROUP_POS[group]
        senders = head_sites(dims, pos=pos)
        if group == "position_transmitters":
            fetchers = {(s.layer, s.head) for s in groups["value_fetchers"]}
            senders = [s for s in senders if (s.layer, s.head) not in fetchers]
        if candidates is not None and candidates < len(senders):
            attr = attribution_patch(side, senders, clean, corrupt, metric, positions=positions).mean(1)
            senders = [senders[i] for i in attr.argsort()[:candidates].tolist()]
        effects = _old_path_patch(side, senders, receivers, clean, corrupt, metric, positions, max_batch).mean(1)
        groups[group] = [senders[i] for i in effects.argsort()[: sizes[group]].tolist()]
        effects_of[group] = dict(zip(senders, effects.tolist()))
        if group == "value_fetchers":
            receivers = [Site(s.layer, "attn.hook_q", head=s.head, pos=-1) for s in groups[group]]
        elif group == "position_transmitters":
            receivers = list(dict.fromkeys(_kv(s, dims, -3) for s in groups[group]))
        elif group == "position_detectors":
            receivers = list(dict.fromkeys(_kv(s, dims, "query_label") for s in groups[group]))
    return groups, effects_of


def _old_dcm(side, task, cfg):
    """One task, the loop :func:`probes.dcm.dcm` ran before the batching (also the reference of
    ``tests/test_dcm_batched.py``). Returns the trained mask and the per-step losses."""
    dims, heads = Dims.of(side.model), list(task.heads)
    orig, cf, target, pos = task.orig_ids, task.cf_ids, task.target_ids, task.positions
    n_train = orig.shape[0] - round(orig.shape[0] * 0.5)
    g = torch.Generator().manual_seed(cfg.seed)
    mask = nn.Parameter(torch.ones(len(heads)))
    opt = torch.optim.Adam([mask], lr=cfg.lr)
    names = sorted({h.hook_name for h in heads})
    zo, zc = cache(side, orig, names), cache(side, cf, names)
    losses = []
    with _no_param_grads(side.model), side.context():
        for _ in range(cfg.steps):
            i = torch.randperm(n_train, generator=g)[: cfg.batch_size]
            lg = _mixed(side, heads, dims, orig[i], {k: v[i] for k, v in zo.items()}, {k: v[i] for k, v in zc.items()}, mask,
                        None if pos is None else {k: v[i] for k, v in pos.items()})
            loss = -lg.gather(-1, target[i][:, None]).mean() + cfg.lam * (1 - mask).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                mask.clamp_(0, 1)
            losses.append(loss.item())
    return mask.detach().tolist(), losses


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _faithfulness(side, tok, split, n_eval: int) -> None:
    """The committed base circuit's faithfulness with 10 random circuits on the eval prompts: every variant on the whole
    prompt (``share_prefix=False``, the old run) against the prefix run once with the ablation all variants share there."""
    from probes.patching import mean_activations
    from workbench.tasks import entity_tracking as et

    eval_p, mean_p = split.heldout[:n_eval], split.heldout[64 + 10:64 + 10 + 64]
    ids, ans, objs = et.to_tensors(eval_p)
    positions = {"query_label": torch.tensor([p.query_label_pos for p in eval_p])}
    groups = json.loads((Path(__file__).parent / "results" / "default.json").read_text())["metrics"]["circuits"]["base"]["groups"]
    sites = list(dict.fromkeys(Site(layer, "attn.hook_z", head=h, pos=GROUP_POS[g]) for g, hs in groups.items() for layer, h in hs))
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(Dims.of(side.model).n_layers)]
    means = mean_activations(side, et.to_tensors(mean_p)[0], names)
    metric = pm.accuracy(ans, objs)

    def run(share: bool):
        return faithfulness(side, sites, ids, metric, means, n_random=10, seed=0, positions=positions, share_prefix=share)

    old, w0, c0 = _timed(lambda: run(False))
    new, w1, c1 = _timed(lambda: run(True))
    same = (old.circuit_score, old.random_scores) == (new.circuit_score, new.random_scores)
    print(f"faithfulness ({n_eval} prompts, {len(sites)} sites, 10 random circuits): old {w0:.1f} s wall / {c0:.1f} s CPU, "
          f"new {w1:.1f} s wall / {c1:.1f} s CPU; speed-up {w0 / w1:.1f}x wall, {c0 / c1:.1f}x CPU; same scores: {same} "
          f"(circuit {old.circuit_score:.4f} / {new.circuit_score:.4f})")


def main(argv: list[str] | None = None) -> int:
    from workbench.models import load_model
    from workbench.tasks import entity_tracking as et
    from workbench.tasks.entity_tracking import counterfactuals as ecf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-patch", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=60)
    ap.add_argument("--n-dcm", type=int, default=32)
    ap.add_argument("--dcm-steps", type=int, default=20)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--skip", choices=["circuits", "dcm", "faithfulness"], action="append", default=[])
    args = ap.parse_args(argv)
    model, tok, info = load_model("smollm2-135m-instruct")
    model.requires_grad_(False)
    side = Side(model)
    split = et.generate(tok, et.EntityTrackingConfig(n_boxes=3, n_train=160, n_heldout=64 + 10 + 64 + 32, seed=0),
                        prepend_bos=info.prepend_bos)
    print(f"load average at start {os.getloadavg()}")
    if "circuits" not in args.skip:
        patch_p = split.heldout[64:64 + args.n_patch]
        clean, ans, objs = et.to_tensors(patch_p)
        corrupt = et.to_tensors([c.counterfactual for c in ecf.make_pairs(tok, patch_p, "random", seed=0)])[0]
        positions = {"query_label": torch.tensor([p.query_label_pos for p in patch_p])}
        metric, sizes = pm.logit_diff(ans, objs), dict.fromkeys(GROUPS, 8)
        (old_groups, old_eff), w0, c0 = _timed(lambda: _old_find_circuit(side, clean, corrupt, metric, positions, sizes,
                                                                          args.candidates))
        new, w1, c1 = _timed(lambda: find_circuit(side, clean, corrupt, metric, positions, sizes, args.candidates,
                                                  log=lambda _m: None))
        diff = max(abs(e - float(new.scores[g].scores[s.layer, s.head])) for g in GROUPS for s, e in old_eff[g].items())
        same = all(old_groups[g] == new.groups[g] for g in GROUPS)
        print(f"circuits ({args.n_patch} prompts, {args.candidates} candidates): old {w0:.1f} s wall / {c0:.1f} s CPU, "
              f"new {w1:.1f} s wall / {c1:.1f} s CPU; speed-up {w0 / w1:.1f}x wall, {c0 / c1:.1f}x CPU; "
              f"same groups: {same}; largest effect difference {diff:.2e} nats")
    if "dcm" not in args.skip:
        dcm_p = split.heldout[64 + 10 + 64:64 + 10 + 64 + args.n_dcm]
        base_groups = json.loads((Path(__file__).parent / "results" / "default.json").read_text())
        groups = base_groups["metrics"]["circuits"]["base"]["groups"]
        tasks = []
        for kind in ("object", "position", "box_label"):
            ps = ecf.make_pairs(tok, dcm_p, kind, seed=0)
            data = (et.to_tensors([p.original for p in ps])[0], et.to_tensors([p.counterfactual for p in ps])[0],
                    torch.tensor([p.target_id for p in ps]), torch.tensor([p.candidate_ids for p in ps]),
                    {"query_label": torch.tensor([p.original.query_label_pos for p in ps])})
            for g, heads in groups.items():
                tasks.append(DCMTask([Site(layer, "attn.hook_z", head=h, pos=GROUP_POS[g]) for layer, h in heads], *data))
        cfg = DCMConfig(steps=args.dcm_steps, lr=0.1, lam=0.01, batch_size=8)
        old, w0, c0 = _timed(lambda: [_old_dcm(side, t, cfg) for t in tasks])
        new, w1, c1 = _timed(lambda: dcm_many(side, tasks, cfg))
        dm = max(abs(a - b) for (m, _), r in zip(old, new) for a, b in zip(m, r.mask))
        dl = max(abs(a - b) for (_, ls), r in zip(old, new) for a, b in zip(ls, r.losses))
        print(f"dcm ({len(tasks)} tasks, {args.n_dcm} pairs, {args.dcm_steps} steps, training only for the old loop, "
              f"training + evaluation for the new): old {w0:.1f} s wall / {c0:.1f} s CPU, new {w1:.1f} s wall / {c1:.1f} s CPU;"
              f" speed-up {w0 / w1:.1f}x wall, {c0 / c1:.1f}x CPU; largest mask difference {dm:.2e}, loss {dl:.2e}")
    if "faithfulness" not in args.skip:
        _faithfulness(side, tok, split, args.n_eval)
    print(f"load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
