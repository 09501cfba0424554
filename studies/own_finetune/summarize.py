"""Does a dataset-level diff on unrelated text reveal the fine-tuning domain? Count domain words in each readout.

Reads the ``results.json`` of ``workbench diff`` runs (base vs a model fine-tuned on ``data/train.jsonl``, the
sourdough-baker persona, diffed on ``data/unrelated.jsonl``) and, for each readout, counts the tokens that belong to
the baking domain: a token counts when its lower-cased text without spaces has at least 3 characters and contains
one of :data:`DOMAIN_STEMS` (a fixed list written before looking at any result). Readouts:

* diff mining: the top-20 tokens whose mean log-probability (and probability) rises most after tuning;
* Activation Difference Lens: the top-20 logit-lens tokens of the mean difference δ and, as the control, of −δ; the
  top-10 of each first-token position's δ; the Patchscope's top-10 at every scale;
* steering: domain words in the base model's generations steered with δ at the chosen (coherent) strength, against
  the unsteered generations (α = 0).

Run:  python -m studies.own_finetune.summarize runs/diff-own-lora runs/diff-own-lofit [--out summary.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

#: Stems of the fine-tuning domain (sourdough baking), fixed before the diffs were run.
DOMAIN_STEMS = ("bak", "bread", "dough", "flour", "sour", "starter", "loaf", "loav", "rye", "oven", "crust", "ferment",
                "yeast", "knead", "crumb", "oat", "wheat", "gluten", "levain", "proof", "bagel", "pastr")


def is_domain(token: str) -> bool:
    t = token.strip().lower()
    return len(t) >= 3 and any(stem in t for stem in DOMAIN_STEMS)


def hits(tokens: list[dict[str, Any]], k: int) -> tuple[int, list[str]]:
    top = [t["token"] for t in tokens[:k]]
    found = [t.strip() for t in top if is_domain(t)]
    return len(found), found


def words_in(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]+", text) if is_domain(w)]


def summarize(run: Path) -> dict[str, Any]:
    """The domain-word counts of one diff run (see the module docstring)."""
    record = json.loads((run / "results.json").read_text())
    m = record["metrics"]
    adl, mining = m["adl"], m["mining"]
    out: dict[str, Any] = {"run": str(run), "tuned": record["meta_info"]["models"]["tuned"]["id"],
                           "kl_mean_nats": m["kl"]["mean_per_token"], "nll": m["nll"], "adl_layer": adl["layer"]}
    out["mining_logprob_top20"] = hits(mining["rising_by_logprob"], 20)
    out["mining_prob_top20"] = hits(mining["rising_by_prob"], 20)
    out["adl_lens_top20"] = hits(adl["lens"]["positive"], 20)
    out["adl_lens_negative_top20"] = hits(adl["lens"]["negative"], 20)
    per_pos = [hits(p["positive"], 10) for p in adl["lens_by_position"]]
    out["adl_lens_by_position_top10"] = [n for n, _ in per_pos]
    out["patchscope_top10_by_scale"] = {str(s["scale"]): hits(s["top"], 10)[0] for s in adl["patchscope"]["by_scale"]}
    steer = adl["steering"]
    by_alpha = {b["alpha"]: b for b in steer["by_alpha"]}
    chosen = steer["chosen_alpha"]
    out["steering_chosen_alpha"] = chosen
    out["steering_domain_words"] = {str(a): words_in(" ".join(g["text"] for g in by_alpha[a]["generations"]))
                                    for a in (0.0, chosen) if a in by_alpha}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| diff run (tuned; ADL layer) | KL (nats/token) | mining Δlog p top-20 | mining Δp top-20 | ADL lens δ top-20 | ADL lens −δ top-20 (control) "
             "| ADL lens per position top-10 | Patchscope top-10 per scale | steering α, domain words (α=0 → chosen) |",
             "|---|---:|---|---|---|---|---|---|---|"]
    for r in rows:
        n, w = r["mining_logprob_top20"]
        steer = r["steering_domain_words"]
        lines.append(f"| {Path(r['run']).name} ({r['tuned']}; layer {r['adl_layer']}) | {r['kl_mean_nats']:.3f} | {n}: {', '.join(w)} | {r['mining_prob_top20'][0]} | "
                     f"{r['adl_lens_top20'][0]} | {r['adl_lens_negative_top20'][0]} | {r['adl_lens_by_position_top10']} | "
                     f"{r['patchscope_top10_by_scale']} | α={r['steering_chosen_alpha']}: "
                     f"{len(steer.get('0.0', []))} → {len(steer.get(str(r['steering_chosen_alpha']), []))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [summarize(r) for r in args.runs]
    md = table(rows)
    print(md)
    if args.out:
        args.out.write_text(md + "\n\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")
    return md


if __name__ == "__main__":
    main()
