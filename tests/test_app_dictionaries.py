"""One base-vs-tuned pair through the sparse dictionaries on tiny saved models (:func:`studies.dictionaries.pair_run.
run_pair`: store, crosscoder and difference SAE trained, read, resumed without retraining), the record read back by the
app's dictionaries page and by the diffing benchmark's dictionary readouts."""

from __future__ import annotations

import json
import re

import pytest

from app.latency.tiny import save_tiny
from app.views import dictionaries as view
from studies.dictionaries.pair_run import PairRunSettings, run_pair
from workbench.config import config_from_dict
from workbench.errors import ConfigError

TEXTS = [f"The {w} sat by the window and the {v} went on all day long" for w in ("cat", "dog", "bird", "child", "old man", "clerk")
         for v in ("rain", "music", "talk", "work")]
SETTINGS = {"store": {"layers": [1], "max_length": 12, "batch_size": 8, "shard_tokens": 64},
            "dictionaries": {"cc": {"kind": "crosscoder", "objective": "batch_topk", "n_latents": 24, "k": 3},
                             "sae": {"kind": "diff_sae", "objective": "batch_topk", "n_latents": 12, "k": 2}},
            "train": {"steps": 12, "batch_tokens": 32, "warmup_steps": 2},
            "views": {"top_latents": 3, "contexts": 2, "context_window": 3, "top_tokens": 4, "steer_latents": 1,
                      "steer_prompts": ["The cat"], "steer_samples": 1, "steer_max_new_tokens": 3, "steer_strengths": [1.0]}}


class Page:
    """A stand-in for ``streamlit``: records what the view draws; every selector picks ``pick`` when offered, else
    its first option."""

    def __init__(self, pick: str = "") -> None:
        self.calls: list[tuple[str, object]] = []
        self.pick = pick

    def selectbox(self, _label, options, format_func=str, key=None):
        self.calls.append(("selectbox", [format_func(o) for o in options]))
        return self.pick if self.pick in options else list(options)[0]

    def expander(self, label):
        self.calls.append(("expander", label))
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a[0] if a else None))


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    from workbench.models.tuned import load_pair

    root = tmp_path_factory.mktemp("dict_pair")
    base = save_tiny(root / "base")
    tuned = save_tiny(root / "tuned", seed=1, perturb_from=base)
    pair = load_pair(str(base), str(tuned), "cpu").pair
    settings = config_from_dict(PairRunSettings, SETTINGS)
    out = root / "runs" / "dictionaries" / "tiny"
    rec = run_pair(pair, TEXTS, out, settings, keywords=["window"], log=lambda s: None)
    trained = {n: (out / n / "training.json").stat().st_mtime_ns for n in ("cc", "sae")}
    again = run_pair(pair, TEXTS, out, settings, keywords=["window"], log=lambda s: None)
    return rec, again, trained, out, root / "runs"


def test_the_pair_run_trains_reads_and_resumes_without_retraining(record):
    rec, again, trained, out, _runs = record
    assert rec["layer"] == 1 and rec["site"] == "blocks.1.hook_resid_post" and rec["n_tokens"] > 100
    cc, sae = rec["dictionaries"]["cc"], rec["dictionaries"]["sae"]
    assert set(cc["evaluation"]["fraction_variance_explained"]) == {"base", "tuned"}
    assert set(sae["evaluation"]["fraction_variance_explained"]) == {"diff"}
    assert sum(cc["classes"].values()) == 24 and cc["latent_scaling"]["tuned_only_after"] <= cc["latent_scaling"]["tuned_only_before"]
    assert cc["training"]["steps_run"] == 12 and 11 * 8 <= cc["training"]["tokens"] <= 12 * 32  # an epoch ends on a short batch
    assert 1 <= len(sae["top_latents"]) <= 3 and all(len(r["top_tokens"]) == 4 for r in sae["top_latents"])
    masses = [r["mass"] for r in sae["top_latents"]]
    assert masses == sorted(masses, reverse=True) and masses[0] > 0
    assert all(c.count("⟦") == 1 and c.count("⟧") == 1 for r in sae["top_latents"] for c in r["contexts"])
    assert sae["steering"][0]["steered"][0]["strength"] == 1.0 and sae["steering"][0]["unsteered"]["n"] == 1
    assert {n: (out / n / "training.json").stat().st_mtime_ns for n in ("cc", "sae")} == trained  # not retrained
    assert again["dictionaries"]["sae"]["evaluation"] == sae["evaluation"]
    assert json.loads((out / "dictionaries.json").read_text())["n_tokens"] == rec["n_tokens"]


def test_the_app_page_lists_the_folder_and_shows_latents(record):
    rec, _again, _trained, _out, runs = record
    folders = view.dictionary_folders(runs)
    assert [f.label for f in folders] == ["dictionaries/tiny"] and not folders[0].error
    rows = view.summary_rows(rec)
    assert [r["dictionary"] for r in rows] == ["cc", "sae"] and rows[0]["tuned-only (Δ ≥ 0.9)"] is not None
    assert rows[1]["tuned-only (Δ ≥ 0.9)"] is None and "variance explained (diff)" in rows[1]
    latents = view.latent_rows(rec["dictionaries"]["sae"])
    assert [r["latent"] for r in latents] == [r["latent"] for r in rec["dictionaries"]["sae"]["top_latents"]]
    assert "<b>" in view.context_html({"contexts": ["a ⟦<b>⟧ c"]}) and "&lt;b&gt;" in view.context_html({"contexts": ["a ⟦<b>⟧ c"]})
    page = Page(pick="sae")
    view.render(page, str(runs))
    drawn = [name for name, _ in page.calls]
    assert drawn.count("dataframe") == 2 and "html" in drawn and ("selectbox", ["cc", "sae"]) in page.calls
    assert sum(1 for name, arg in page.calls if name == "markdown" and str(arg).startswith("Steering the base model")) == 1
    empty = Page()
    assert view.render(empty, str(runs / "nothing-here")) == 0 and empty.calls[0][0] == "info"


def test_the_benchmark_reads_the_dictionary_latents_as_readouts(record):
    from studies.diffing_benchmark.readouts import READOUTS, score_record

    rec = record[0]
    tokens = READOUTS["difference-SAE latents: decoder tokens"][1]({"dictionaries": rec})
    assert [label for label, _ in tokens] == [f"sae latent {r['latent']}" for r in rec["dictionaries"]["sae"]["top_latents"]]
    contexts = READOUTS["difference-SAE latents: max-activating contexts"][1]({"dictionaries": rec})
    assert all("⟦" not in c for _l, cs in contexts for c in cs)
    word = next(w for w in re.findall(r"[a-z]+", contexts[0][1][0].lower()) if len(w) > 2)  # a word of the first context
    scored = score_record({"dictionaries": rec, "kl": {"top": []}, "mining": {"rising_by_prob": [], "rising_by_logprob": []},
                           "adl": {"by_position": [{"position": 0, "lens": {"positive": [], "negative": []}}]}}, [word])
    assert scored["difference-SAE latents: max-activating contexts"]["share"] > 0
    assert scored["crosscoder tuned-only latents (after Latent Scaling): decoder tokens"]["n"] >= 0


def test_pair_run_settings_refuse_bad_input_before_any_model():
    with pytest.raises(ConfigError, match="kind must be one of"):
        config_from_dict(PairRunSettings, {**SETTINGS, "dictionaries": {"x": {"kind": "pca", "n_latents": 4}}})
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        config_from_dict(PairRunSettings, {**SETTINGS, "train": {"steps": 0}})
    with pytest.raises(ConfigError, match="at least one dictionary"):
        config_from_dict(PairRunSettings, {**SETTINGS, "dictionaries": {}})
