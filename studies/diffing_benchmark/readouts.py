"""The readouts the diffing benchmark scores, each read from one ``workbench diff`` record (``results.json`` of
:mod:`studies.dataset_diff`), and the best-of-candidates rule.

A readout registers itself with :func:`readout` (name, kind) and returns its **candidates**: ``[(label, list of
strings)]`` — ranked token strings for a ``"tokens"`` readout, texts for a ``"generations"`` one. A readout read per
position (the ADL ones) has one candidate per position 1 … k−1 (and, for the lens, per sign of δ); its score is the best
candidate's (:func:`best_score`), and the control fine-tune gets the same best-of treatment with the same keywords, so
the score minus the control's does not reward having more candidates. Position 0 (the attention sink) is a readout of
its own. The Patchscope's oracle scale (the scale with the best keyword score) is labelled "oracle": it is what a judge
that knew the answer would pick, not a method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from studies.diffing_benchmark.scoring import score_generations, score_tokens

Candidates = list[tuple[str, list[str]]]
#: name -> (kind, extractor); filled by :func:`readout`, in registration order (the table's row order).
READOUTS: dict[str, tuple[str, Callable[[dict[str, Any]], Candidates]]] = {}


def readout(name: str, kind: str) -> Callable[[Callable[[dict[str, Any]], Candidates]], Callable[[dict[str, Any]], Candidates]]:
    """Register ``fn(metrics) -> candidates`` as the readout ``name`` of ``kind`` ``"tokens"`` or ``"generations"``."""
    assert kind in ("tokens", "generations"), kind

    def register(fn: Callable[[dict[str, Any]], Candidates]) -> Callable[[dict[str, Any]], Candidates]:
        READOUTS[name] = (kind, fn)
        return fn

    return register


def _tokens(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [r["token"] for r in rows]


def _later(adl: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in adl["by_position"] if p["position"] >= 1]


@readout("top-KL contexts (tuned top-1 token)", "tokens")
def _top_kl(m: dict[str, Any]) -> Candidates:
    return [("all", [t["tuned_top1_text"] for t in m["kl"]["top"]])]


@readout("diff mining Δp", "tokens")
def _mining_p(m: dict[str, Any]) -> Candidates:
    return [("rising", _tokens(m["mining"]["rising_by_prob"]))]


@readout("diff mining Δlog p", "tokens")
def _mining_logp(m: dict[str, Any]) -> Candidates:
    return [("rising", _tokens(m["mining"]["rising_by_logprob"]))]


@readout("ADL logit lens, position 0 (sink)", "tokens")
def _lens_sink(m: dict[str, Any]) -> Candidates:
    p = m["adl"]["by_position"][0]
    return [("δ_0", _tokens(p["lens"]["positive"])), ("−δ_0", _tokens(p["lens"]["negative"]))]


@readout("ADL logit lens, best of positions 1+", "tokens")
def _lens(m: dict[str, Any]) -> Candidates:
    out = []
    for p in _later(m["adl"]):
        j = p["position"]
        out += [(f"δ_{j}", _tokens(p["lens"]["positive"])), (f"−δ_{j}", _tokens(p["lens"]["negative"]))]
    return out


@readout("ADL Patchscope (rule scale), best of positions 1+", "tokens")
def _patchscope_rule(m: dict[str, Any]) -> Candidates:
    out = []
    for p in _later(m["adl"]):
        ps = p["patchscope"]
        row = next(r for r in ps["by_scale"] if r["scale"] == ps["best_scale"])
        out.append((f"δ_{p['position']} × {row['scale']:g}", _tokens(row["tokens"])))
    return out


@readout("ADL Patchscope (oracle scale; labelled)", "tokens")
def _patchscope_oracle(m: dict[str, Any]) -> Candidates:
    return [(f"δ_{p['position']} × {r['scale']:g}", _tokens(r["tokens"])) for p in _later(m["adl"]) for r in p["patchscope"]["by_scale"]]


@readout("ADL steered generations, best of positions 1+", "generations")
def _steered(m: dict[str, Any]) -> Candidates:
    return [(f"δ_{p['position']} at α {p['steering']['chosen_alpha']}", p["steering"]["chosen_samples"])
            for p in _later(m["adl"]) if p.get("steering") and p["steering"]["chosen_samples"]]


def _latents(m: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    """``(label, latent row)`` of every top latent of every dictionary of ``kind`` in the record's dictionary readouts
    (crosscoders: tuned-only after Latent Scaling; difference SAEs: by activation mass), none without them."""
    dicts = (m.get("dictionaries") or {}).get("dictionaries", {})
    return [(f"{name} latent {row['latent']}", row) for name, d in dicts.items() if d["kind"] == kind for row in d["top_latents"]]


def _contexts(row: dict[str, Any]) -> list[str]:
    return [c.replace("⟦", "").replace("⟧", "") for c in row["contexts"]]


@readout("crosscoder tuned-only latents (after Latent Scaling): decoder tokens", "tokens")
def _crosscoder_tokens(m: dict[str, Any]) -> Candidates:
    return [(label, row["top_tokens"]) for label, row in _latents(m, "crosscoder")]


@readout("crosscoder tuned-only latents (after Latent Scaling): max-activating contexts", "generations")
def _crosscoder_contexts(m: dict[str, Any]) -> Candidates:
    return [(label, _contexts(row)) for label, row in _latents(m, "crosscoder") if row["contexts"]]


@readout("difference-SAE latents: decoder tokens", "tokens")
def _diff_sae_tokens(m: dict[str, Any]) -> Candidates:
    return [(label, row["top_tokens"]) for label, row in _latents(m, "diff_sae")]


@readout("difference-SAE latents: max-activating contexts", "generations")
def _diff_sae_contexts(m: dict[str, Any]) -> Candidates:
    return [(label, _contexts(row)) for label, row in _latents(m, "diff_sae") if row["contexts"]]


def best_score(kind: str, candidates: Candidates, keywords: Sequence[str], top: int = 20) -> tuple[dict[str, Any], str | None]:
    """``(score, label)`` of the best candidate: most keyword hits then highest MRR for tokens, highest share of texts
    with a keyword for generations; an empty candidate list scores zero (``n`` = 0) with label ``None``."""
    if kind == "tokens":
        scored = [(score_tokens(c, keywords, top), label) for label, c in candidates]
        zero = {"hits": 0, "mrr": 0.0, "n": 0}
        key = lambda s: (s[0]["hits"], s[0]["mrr"])  # noqa: E731
    else:
        scored = [(score_generations(c, keywords), label) for label, c in candidates]
        zero = {"share": 0.0, "n": 0}
        key = lambda s: s[0]["share"]  # noqa: E731
    return max(scored, key=key) if scored else (zero, None)


def score_record(metrics: dict[str, Any], keywords: Sequence[str], top: int = 20) -> dict[str, dict[str, Any]]:
    """Every registered readout of one diff record scored against ``keywords``: ``{readout: {**score, "best": label}}``."""
    out = {}
    for name, (kind, extract) in READOUTS.items():
        score, label = best_score(kind, extract(metrics), keywords, top)
        out[name] = {**score, "best": label}
    return out
