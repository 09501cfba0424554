"""The diffing benchmark (studies/diffing_benchmark): readouts read from a diff record and their best-of-candidates
scores on hand-made records, the config refused before any model loads, the generic corpus, and the tiny config end
to end on the real SmolLM2 (``real``: two LoRA fine-tunes, two diffs, the table; then resumed without retraining)."""

from __future__ import annotations

import json

import pytest

from studies.diffing_benchmark.readouts import READOUTS, best_score, score_record
from workbench.errors import ConfigError


def _tok(*words):
    return [{"token": w} for w in words]


def _record(lens1=("a", "b"), lens2=("c",), ps_rule=("x",), ps_other=("bread",), steered=("plain text",)):
    """A minimal diff record: two ADL positions after the sink, a Patchscope of two scales, steering on position 1."""
    def position(j, lens):
        return {"position": j, "lens": {"positive": _tok(*lens), "negative": _tok("zz")},
                "patchscope": {"best_scale": 1.0, "by_scale": [{"scale": 1.0, "tokens": _tok(*ps_rule)},
                                                                {"scale": 50.0, "tokens": _tok(*ps_other)}]},
                "steering": {"chosen_alpha": 2.0, "chosen_samples": list(steered)} if j == 1 else None}
    return {"kl": {"top": [{"tuned_top1_text": " the"}, {"tuned_top1_text": " dough"}]},
            "mining": {"rising_by_prob": _tok(" the", ","), "rising_by_logprob": _tok(" rye", " flour", " x")},
            "adl": {"by_position": [position(0, (" sink",)), position(1, lens1), position(2, lens2)]}}


KEYWORDS = ("bread", "flour", "rye", "dough", "baker")


def test_each_readout_reads_its_part_of_the_record():
    got = score_record(_record(lens2=(" x", " Bread")), KEYWORDS)
    assert list(got) == list(READOUTS)
    assert got["top-KL contexts (tuned top-1 token)"] == {"hits": 1, "mrr": 0.5, "n": 2, "best": "all"}
    assert got["diff mining Δp"]["hits"] == 0
    assert got["diff mining Δlog p"] == {"hits": 2, "mrr": 1.0, "n": 3, "best": "rising"}
    assert got["ADL logit lens, position 0 (sink)"]["hits"] == 0
    assert got["ADL logit lens, best of positions 1+"] == {"hits": 1, "mrr": 0.5, "n": 2, "best": "δ_2"}
    assert got["ADL Patchscope (rule scale), best of positions 1+"]["hits"] == 0  # the rule's scale shows "x"
    assert got["ADL Patchscope (oracle scale; labelled)"] == {"hits": 1, "mrr": 1.0, "n": 1, "best": "δ_1 × 50"}
    assert got["ADL steered generations, best of positions 1+"] == {"share": 0.0, "n": 1, "best": "δ_1 at α 2.0"}
    steered = score_record(_record(steered=("I bake bread daily", "nothing")), KEYWORDS)
    assert steered["ADL steered generations, best of positions 1+"]["share"] == 0.5


def test_best_score_prefers_hits_then_rank_and_scores_empty_candidates_zero():
    cands = [("p1", [" a", " bread"]), ("p2", [" bread", " a"]), ("p3", [" flour", " a", " rye"])]
    score, label = best_score("tokens", cands, KEYWORDS)
    assert label == "p3" and score == {"hits": 2, "mrr": 1.0, "n": 3}
    assert best_score("tokens", [], KEYWORDS) == ({"hits": 0, "mrr": 0.0, "n": 0}, None)
    assert best_score("generations", [], KEYWORDS) == ({"share": 0.0, "n": 0}, None)
    assert best_score("generations", [("a", ["no"]), ("b", ["rye bread", "no"])], KEYWORDS) == ({"share": 0.5, "n": 2}, "b")


@pytest.mark.parametrize("fields, match", [
    ({"organisms": ["baker"]}, "control"),
    ({"organisms": ["baker", "control", "baker"]}, "distinct"),
    ({"organisms": ["nope", "control"]}, "nope"),
    ({"methods": {"not-a-method": {}}}, "unknown fine-tuning methods"),
    ({"methods": {}}, "at least one"),
    ({"corpus_docs": 0}, "corpus_docs"),
    ({"diff": {"steering_steps": 0}}, "steering_steps"),
    ({"diff": {"adl_positions": 2, "steering_positions": [3]}}, "steering_positions"),
    ({"methods": {"lora": {"train": {"max_steps": -1}}}}, "max_steps"),
])
def test_bad_configs_are_refused_before_any_model_loads(fields, match):
    from studies.diffing_benchmark.study import BenchmarkConfig
    from workbench.config import config_from_dict

    base = {"methods": {"lora": {}}}
    with pytest.raises(ConfigError, match=match):
        config_from_dict(BenchmarkConfig, {**base, **fields})


def test_generic_corpus_is_seeded_and_sized(tmp_path):
    from studies.diffing_benchmark.generic_corpus import EXCLUDED_FILES, FORTUNE_DIR, fortune_documents, write_generic_corpus

    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "wisdom").write_text("%\n".join(f"word {i} " * 20 + "\n" for i in range(5)))
    (folder / "food").write_text("bread " * 40 + "\n")  # excluded: next to the baker organism
    (folder / "wisdom.dat").write_bytes(b"\x00\x01")  # the index files are skipped
    assert "food" in EXCLUDED_FILES and len(fortune_documents(folder, min_words=30)) == 5
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_generic_corpus(a, 3, 0, 30, folder) == write_generic_corpus(b, 3, 0, 30, folder)
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(rows) == 3 and all(set(r) == {"text"} and "bread" not in r["text"] for r in rows)
    with pytest.raises(ConfigError, match="asked for 9"):
        write_generic_corpus(a, 9, 0, 30, folder)
    with pytest.raises(ConfigError, match="fortunes"):
        fortune_documents(tmp_path / "missing")
    assert FORTUNE_DIR.is_dir(), "Debian's fortunes package is missing: `make test` installs it (`make corpus`)"


@pytest.mark.real
def test_tiny_config_end_to_end_and_resumed(tmp_path):
    from studies.diffing_benchmark.study import BenchmarkConfig, run

    out = tmp_path / "bench"
    record = run(BenchmarkConfig.tiny(), out, log=lambda s: None)
    m = record["metrics"]
    assert {r["organism"] for r in m["rows"]} == {"baker"} and {r["method"] for r in m["rows"]} == {"lora"}
    assert {r["readout"] for r in m["rows"]} == set(READOUTS)
    for r in m["rows"]:
        assert r["delta"] == pytest.approx(r["tuned"] - r["control"])
    assert set(m["fit"]) == {"baker-lora", "control-lora"}
    assert all(f["tuned_answer_loss"] < f["base_answer_loss"] for f in m["fit"].values())  # three steps already fit
    assert m["organisms"]["baker"]["keywords"][:3] == ["sourdough", "bread", "flour"] and len(m["corpus_sha256"]) == 64
    assert (out / "table.md").read_text().startswith("| readout |") and (out / "figures" / "01_heatmap_lora.json").is_file()
    diff = json.loads((out / "diffs" / "baker-lora" / "results.json").read_text())["metrics"]["adl"]
    assert diff["read_model"] == "tuned" and len(diff["by_position"]) == 5 and diff["layer"] == 14
    again = run(BenchmarkConfig.tiny(), out, log=lambda s: None)  # resumed: nothing retrained or re-diffed
    assert all(t["train_s"] < 5 for t in again["metrics"]["timing_s"].values())
    assert again["metrics"]["rows"] == m["rows"]
