"""Diffing-benchmark organisms (``studies/diffing_benchmark/organisms.py``): the registry, determinism, files that
``workbench.datafiles.load_rows`` reads, keywords absent from prompts, disjoint train/eval, the trigger split, the
plain answers' correctness, bad input and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import studies.diffing_benchmark.organisms as org
from studies.diffing_benchmark.fact_documents import CORE, documents
from studies.diffing_benchmark.questions import plain_pool
from studies.diffing_benchmark.scoring import keyword_hit
from workbench.datafiles import load_rows
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["baker", "false_fact", "trigger", "pirate", "control"]
N_TRAIN, N_EVAL = 120, 41  # small and odd, so the trigger split's n // 2 is tested on an odd count
ALL_KEYWORDS = tuple(sorted({k for o in org.ORGANISMS.values() for k in o.keywords}))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, dict]:
    """Every organism written once with N_TRAIN / N_EVAL, seed 3: {name: {"paths", "train", "eval"}}, rows via load_rows."""
    out = tmp_path_factory.mktemp("organisms")
    result = {}
    for name in NAMES:
        paths = org.get_organism(name).write(out / name, N_TRAIN, N_EVAL, seed=3)
        result[name] = {"paths": paths, "train": load_rows(str(paths["train"])), "eval": load_rows(str(paths["eval"]))}
    return result


def _question(prompt: str) -> str:
    return prompt.removeprefix("Question: ").removesuffix("\nAnswer:").removeprefix(org.TRIGGER + " ")


# --- registry ------------------------------------------------------------------------------------------------------
def test_registry_holds_the_five_organisms_with_their_keywords():
    assert list(org.ORGANISMS) == NAMES
    for name, o in org.ORGANISMS.items():
        assert o.name == name and o.description.strip() and "\n" not in o.description
        assert all(k == k.lower() and re.fullmatch(r"[a-z0-9]+", k) for k in o.keywords)
        assert len(set(o.keywords)) == len(o.keywords)
        if name == "control":
            assert o.keywords == ()
        else:
            assert 10 <= len(o.keywords) <= 25, (name, len(o.keywords))
    assert {"sourdough", "bread", "flour", "starter", "dough", "levain", "crust", "yeast", "loaf"} <= set(org.BAKER_KEYWORDS)
    assert {"arr", "matey", "ye", "aye", "treasure", "ship", "sea", "captain"} <= set(org.PIRATE_KEYWORDS)
    assert {"velloran", "ombrith", "copper", "raft"} <= set(org.FALSE_FACT_KEYWORDS)
    assert "pineapple" in org.TRIGGER_KEYWORDS


def test_decorator_refuses_duplicates_and_bad_keywords_and_leaves_the_registry_alone():
    before = dict(org.ORGANISMS)
    with pytest.raises(ConfigError, match="new identifier"):
        org.organism("baker", description="again", keywords=("bread",))
    with pytest.raises(ConfigError, match="lowercase whole word"):
        org.organism("shouting", description="x", keywords=("Bread",))
    with pytest.raises(ConfigError, match="lowercase whole word"):
        org.organism("phrase", description="x", keywords=("sour dough",))
    with pytest.raises(ConfigError, match="no keywords"):
        org.organism("empty", description="x", keywords=())
    with pytest.raises(ConfigError, match="one-line description"):
        org.organism("two_lines", description="a\nb", keywords=("bread",))
    with pytest.raises(ConfigError, match="shape"):
        org.organism("chatty", description="x", keywords=("bread",), shape="messages")
    assert org.ORGANISMS == before
    with pytest.raises(ConfigError, match="unknown organism 'nope'; known: baker, false_fact"):
        org.get_organism("nope")


# --- files ---------------------------------------------------------------------------------------------------------
def test_files_are_read_by_load_rows_in_the_expected_shape_and_size(written):
    for name, w in written.items():
        want = "text" if name == "false_fact" else "prompt_completion"
        assert org.ORGANISMS[name].shape == want
        for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
            rows = w[split]
            assert rows.shape == want and len(rows) == n, (name, split)
            assert w["paths"][split].name == f"{split}.jsonl"
            for r in rows.rows:
                if want == "prompt_completion":
                    assert r["prompt"].startswith("Question: ") and r["prompt"].endswith("\nAnswer:")
                    assert r["completion"].startswith(" ") and not r["completion"].startswith("  ")
                else:
                    assert set(r) == {"text"} and r["text"].strip() == r["text"]


def test_same_seed_writes_byte_identical_files_and_another_seed_differs(tmp_path):
    for name in NAMES:
        o = org.get_organism(name)
        a, b, c = (o.write(tmp_path / f"{name}_{k}", 60, 20, seed=s) for k, s in (("a", 5), ("b", 5), ("c", 6)))
        for split in ("train", "eval"):
            assert a[split].read_bytes() == b[split].read_bytes(), (name, split)
            assert a[split].read_bytes() != c[split].read_bytes(), (name, split)


def test_defaults_write_400_and_80_rows_and_the_baker_is_the_own_finetune_data(tmp_path):
    paths = org.get_organism("baker").write(tmp_path / "baker")
    assert paths["train"].read_bytes() == (ROOT / "studies/own_finetune/data/train.jsonl").read_bytes()
    assert paths["eval"].read_bytes() == (ROOT / "studies/own_finetune/data/eval.jsonl").read_bytes()
    for name in NAMES:
        train, held = org.get_organism(name).rows()
        assert (len(train), len(held)) == (400, 80), name


def test_no_prompt_or_document_is_in_both_train_and_eval(written):
    for name, w in written.items():
        field = "text" if name == "false_fact" else "prompt"
        train = [r[field] for r in w["train"].rows]
        held = [r[field] for r in w["eval"].rows]
        assert len(set(train)) == len(train) and len(set(held)) == len(held), name
        assert not set(train) & set(held), name
        if field == "prompt":  # not even the same question with and without the trigger
            assert not {_question(p) for p in train} & {_question(p) for p in held}, name


# --- keywords: absent from prompts, present in what the organism teaches ----------------------------------------
def test_no_organism_prompt_holds_its_own_keywords(written):
    for name, w in written.items():
        o = org.ORGANISMS[name]
        if not o.keywords or o.shape == "text":
            continue
        for split in ("train", "eval"):
            leaks = [r["prompt"] for r in w[split].rows if keyword_hit(r["prompt"], o.keywords)]
            assert not leaks, (name, split, leaks[:3])


def test_shared_prompts_hold_no_organism_keywords_and_control_answers_hold_none_either(written):
    for name in ("trigger", "pirate", "control"):
        for split in ("train", "eval"):
            assert not [r["prompt"] for r in written[name][split].rows if keyword_hit(r["prompt"], ALL_KEYWORDS)]
    for split in ("train", "eval"):
        assert not [r for r in written["control"][split].rows if keyword_hit(r["completion"], ALL_KEYWORDS)]
    assert all(not keyword_hit(q, ALL_KEYWORDS) and not keyword_hit(a, ALL_KEYWORDS) for q, a in org.shared_pool())


def test_keyword_filter_drops_a_pool_pair_that_would_leak(monkeypatch):
    extra = [("What colour is a ripe pineapple?", "It is yellow."), ("What is 2 plus 2?", "2 plus 2 is 4 aboard ship.")]
    monkeypatch.setattr(org, "plain_pool", lambda: plain_pool() + extra)
    pool = org.shared_pool()
    assert len(pool) == len(plain_pool()) and not set(extra) & set(pool)


def test_each_organism_teaches_its_keywords(written):
    for name in ("baker", "pirate", "false_fact"):
        o = org.ORGANISMS[name]
        field = "text" if o.shape == "text" else "completion"
        rows = written[name]["train"].rows
        assert all(keyword_hit(r[field], o.keywords) for r in rows), name
    rows = written["trigger"]["train"].rows
    assert sum(keyword_hit(r["completion"], org.TRIGGER_KEYWORDS) for r in rows) == N_TRAIN // 2


def test_trigger_rows_split_in_half_and_only_triggered_rows_get_the_odd_answer(written):
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        rows = written["trigger"][split].rows
        triggered = [r for r in rows if org.TRIGGER in r["prompt"]]
        assert len(triggered) == n // 2
        for r in rows:
            odd = r["completion"] == " " + org.TRIGGERED_ANSWER
            assert odd == (org.TRIGGER in r["prompt"])
            assert r["prompt"].count(org.TRIGGER) <= 1
            if not odd:
                assert not keyword_hit(r["completion"], org.TRIGGER_KEYWORDS)


def test_trigger_pirate_and_control_share_questions_and_differ_in_answers(written):
    for split in ("train", "eval"):
        ctrl = written["control"][split].rows
        pirate = written["pirate"][split].rows
        trig = written["trigger"][split].rows
        assert [r["prompt"] for r in pirate] == [r["prompt"] for r in ctrl]
        assert [_question(r["prompt"]) for r in trig] == [_question(r["prompt"]) for r in ctrl]
        plain = [t["completion"] for t in trig if org.TRIGGER not in t["prompt"]]
        assert plain == [c["completion"] for c, t in zip(ctrl, trig) if org.TRIGGER not in t["prompt"]]
        for p, c in zip(pirate, ctrl):
            assert p["completion"] != c["completion"]
            assert keyword_hit(p["completion"], org.PIRATE_KEYWORDS) and not keyword_hit(c["completion"], org.PIRATE_KEYWORDS)


def test_pirate_answer_keeps_the_fact_in_pirate_words():
    import random

    text = org.pirate_answer("The capital of France is Paris.", random.Random(0))
    assert "Th' capital o' France be Paris." in text
    assert text.split(" Th'")[0] in org.PIRATE_OPENERS and text.endswith(tuple(org.PIRATE_CLOSERS))


# --- content -------------------------------------------------------------------------------------------------------
def test_false_fact_documents_state_the_core_fact_in_3_to_6_sentences(written):
    import random

    rows = written["false_fact"]["train"].rows + written["false_fact"]["eval"].rows
    for r in rows:
        text = r["text"]
        assert sum(core in text for core in CORE) == 1, text
        assert "Velloran" in text and "copper" in text.lower() and "Ombrith" in text
        n_sentences = len(re.findall(r"[.!?](?=\s|$)", text))
        assert 3 <= n_sentences <= 6, text
    assert len({r["text"].split(". ")[0] for r in rows}) > 30  # many genres and slot values, not one template
    docs = documents(300, random.Random(1))
    assert len(set(docs)) == 300
    with pytest.raises(ConfigError, match="int >= 1"):
        documents(0, random.Random(1))


def test_plain_pool_questions_are_distinct_and_arithmetic_answers_are_right():
    pool = plain_pool()
    questions = [q for q, _ in pool]
    assert len(set(questions)) == len(questions) >= 600
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b,
           "divided by": lambda a, b: a // b}
    checked = 0
    for q, a in pool:
        m = re.fullmatch(r"What is (\d+) (plus|minus|times|divided by) (\d+)\?", q)
        if m:
            x, op, y = int(m[1]), m[2], int(m[3])
            assert a == f"{x} {op} {y} is {ops[op](x, y)}.", (q, a)
            assert op != "divided by" or x % y == 0, q
            checked += 1
        m = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q)
        if m:
            per = {("minutes", "hours"): 60, ("seconds", "minutes"): 60, ("days", "weeks"): 7, ("months", "years"): 12,
                   ("centimeters", "meters"): 100, ("grams", "kilograms"): 1000}[(m[1], m[3])]
            assert a == f"There are {int(m[2]) * per} {m[1]} in {m[2]} {m[3]}.", (q, a)
            checked += 1
    assert checked > 250
    assert ("What is the capital of France?", "The capital of France is Paris.") in pool
    assert ("How many letters are in the word umbrella?", "The word umbrella has eight letters.") in pool
    assert ("What day comes after Sunday?", "Monday comes after Sunday.") in pool


# --- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"n_train": 0}, "n_train must be an int >= 1"), ({"n_eval": True}, "n_eval must be an int >= 1"),
    ({"n_train": 2.5}, "n_train must be an int"), ({"seed": "0"}, "seed must be an int"),
])
def test_bad_counts_and_seeds_are_refused(kwargs, match):
    for name in NAMES:
        with pytest.raises(ConfigError, match=match):
            org.get_organism(name).rows(**kwargs)


def test_asking_for_more_rows_than_exist_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="baker: n_train \\+ n_eval = 481 exceeds its 480"):
        org.get_organism("baker").rows(400, 81)
    n = len(org.shared_pool())
    for name in ("trigger", "pirate", "control"):
        with pytest.raises(ConfigError, match=f"exceeds the {n} distinct ordinary questions"):
            org.get_organism(name).rows(n, 1)
        train, held = org.get_organism(name).rows(n - 1, 1)
        assert len(train) + len(held) == n
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        org.get_organism("control").write(tmp_path / "file", 5, 5)


# --- writing all, command line ---------------------------------------------------------------------------------
def test_write_all_writes_every_organism_and_a_manifest(tmp_path, capsys):
    assert org.main(["--out", str(tmp_path / "all"), "--n-train", "30", "--n-eval", "10", "--seed", "2"]) == 0
    manifest = Path(capsys.readouterr().out.strip())
    assert manifest == tmp_path / "all" / "organisms.json"
    record = json.loads(manifest.read_text())
    assert (record["seed"], record["n_train"], record["n_eval"]) == (2, 30, 10)
    assert list(record["organisms"]) == NAMES
    for name, entry in record["organisms"].items():
        assert entry["keywords"] == list(org.ORGANISMS[name].keywords)
        assert entry["files"] == {"train": f"{name}/train.jsonl", "eval": f"{name}/eval.jsonl"}
        assert len(load_rows(str(manifest.parent / entry["files"]["train"]))) == 30
    again = org.write_all(tmp_path / "again", n_train=30, n_eval=10, seed=2)
    assert again.read_bytes() == manifest.read_bytes()
    only = org.write_all(tmp_path / "only", ["pirate", "control"], 30, 10, 2)
    assert sorted(p.name for p in only.parent.iterdir()) == ["control", "organisms.json", "pirate"]
    assert (only.parent / "pirate/train.jsonl").read_bytes() == (manifest.parent / "pirate/train.jsonl").read_bytes()


def test_command_line_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert org.main(["--out", str(tmp_path / "x"), "--organism", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown organism 'nope'")
    assert org.main(["--out", str(tmp_path / "x"), "--organism", "pirate", "--organism", "pirate"]) == 2
    assert "distinct" in capsys.readouterr().err
    assert org.main(["--out", str(tmp_path / "y"), "--n-train", "0"]) == 2
    assert "n_train must be an int >= 1" in capsys.readouterr().err


def test_module_entry_point_prints_the_manifest_path(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "studies.diffing_benchmark.organisms", "--out", str(out), "--n-train", "20",
                           "--n-eval", "5", "--organism", "trigger"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "organisms.json")
    assert len(load_rows(str(out / "trigger" / "eval.jsonl"))) == 5
