"""``python -m studies.own_finetune --config tiny|default|PATH.json --out runs/own_finetune``: each configured method
fine-tuned on the sourdough-baker data through the train job, base vs tuned on the held-out rows."""

from __future__ import annotations

from studies.common import study_main
from studies.own_finetune.study import OwnFinetuneConfig, run


def report(record: dict) -> None:
    print("| method | trainable parameters | answer loss base → tuned (nats/token) | perplexity | exact match (answer) |")
    print("|---|---:|---|---|---|")
    for name, m in record["metrics"]["methods"].items():
        b, t = m["base"], m["tuned"]
        print(f"| {name} | {m['n_trainable_parameters']} | {b['answer_loss']:.3f} → {t['answer_loss']:.3f} | "
              f"{b['perplexity']:.2f} → {t['perplexity']:.2f} | {b['exact_match_answer']:.3f} → {t['exact_match_answer']:.3f} |")
    print(f"wall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("own_finetune", __doc__, OwnFinetuneConfig.load, run, report, argv,
                      out_help="results.json, figures/, one run folder per method")


if __name__ == "__main__":
    raise SystemExit(main())
