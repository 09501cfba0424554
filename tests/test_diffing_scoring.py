"""Diffing-benchmark scoring (``studies/diffing_benchmark/scoring.py``): the whole-word keyword rule, token and
generation scores on hand-made readouts (exact hits and MRR), subtraction of the control, the table and heatmap."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from studies.diffing_benchmark.scoring import (
    check_keywords,
    heatmap,
    keyword_forms,
    keyword_hit,
    markdown_table,
    relative_to_control,
    score_generations,
    score_tokens,
    table_rows,
)
from workbench.errors import ConfigError

BAKER = ("sourdough", "bread", "flour", "loaf", "loaves", "crust")
PIRATE = ("ye", "arr", "captain", "sea", "box", "berry", "day", "mango")


# --- the whole-word rule ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, keywords, hit", [
    (" Sourdough", BAKER, True), ("bread,", BAKER, True), ("BREAD", BAKER, True), ("(flour)", BAKER, True),
    ("I bake bread.", BAKER, True), ("\nCrust", BAKER, True), ("sourdough_bread", BAKER, True),
    ("source", ("sour",), False), ("sour", ("sour",), True), ("Sour!", ("sour",), True),
    ("ough", BAKER, False), ("Sour", BAKER, False), ("dough", ("sourdough",), False), ("sourdoughs", BAKER, True),
    ("breads", BAKER, True), ("breadth", BAKER, False), ("gingerbread", BAKER, False), ("loafs", BAKER, True),
    ("loaves", ("loaf",), False), ("loaves", BAKER, True), ("crusty", BAKER, False),
    ("yes", PIRATE, False), ("Ye", PIRATE, True), ("ye'll", PIRATE, True), ("yes, arr", PIRATE, True),
    ("the captain's log", PIRATE, True), ("sea-dog", PIRATE, True), ("seas", PIRATE, True), ("seal", PIRATE, False),
    ("boxes", PIRATE, True), ("berries", PIRATE, True), ("days", PIRATE, True), ("mangoes", PIRATE, True),
    ("mangos", PIRATE, True), ("arrs", PIRATE, True), ("arrow", PIRATE, False), ("", PIRATE, False),
    ("  ", BAKER, False), ("Brot und Mehl", BAKER, False), ("pain au levain", ("levain",), True),
])
def test_keyword_hit_is_whole_word_case_insensitive_with_regular_plurals(text, keywords, hit):
    assert keyword_hit(text, keywords) is hit


def test_keyword_forms_lists_the_plurals_exactly():
    assert keyword_forms(("bread",)) == {"bread", "breads"}
    assert keyword_forms(("ye",)) == {"ye"}
    assert keyword_forms(("box", "city", "day", "mango")) == {"box", "boxs", "boxes", "city", "citys", "cities", "day",
                                                               "days", "mango", "mangos", "mangoes"}
    assert keyword_forms(("dish", "church")) == {"dish", "dishs", "dishes", "church", "churchs", "churches"}


@pytest.mark.parametrize("keywords, match", [
    ("bread", "list or tuple"), (("Bread",), "lowercase whole word"), (("sour dough",), "lowercase whole word"),
    (("bread,",), "lowercase whole word"), (("",), "lowercase whole word"), ((3,), "lowercase whole word"),
    ((), "no keywords"), (None, "list or tuple"),
])
def test_bad_keywords_raise_one_config_error(keywords, match):
    with pytest.raises(ConfigError, match=match):
        keyword_hit("bread", keywords)


def test_bad_text_raises_and_empty_keywords_are_allowed_only_on_request():
    with pytest.raises(ConfigError, match="text must be a str"):
        keyword_hit(None, BAKER)
    with pytest.raises(ConfigError, match="text must be a str"):
        keyword_hit(b"bread", BAKER)
    assert check_keywords((), allow_empty=True) == ()
    assert check_keywords(["bread", "flour"]) == ("bread", "flour")


# --- token readouts ------------------------------------------------------------------------------------------------
def test_score_tokens_counts_hits_and_reciprocal_rank_of_the_first_hit():
    tokens = [" the", "ough", " Bread", " source", " sourdough", ",", "flour", " Sour"]
    assert score_tokens(tokens, BAKER) == {"hits": 3, "mrr": 1 / 3, "n": 8}  # hits at ranks 3, 5, 7
    assert score_tokens(tokens, BAKER)["mrr"] == pytest.approx(1 / 3)
    assert score_tokens(tokens, BAKER, top=3) == {"hits": 1, "mrr": pytest.approx(1 / 3), "n": 3}
    assert score_tokens(tokens, BAKER, top=2) == {"hits": 0, "mrr": 0.0, "n": 2}
    assert score_tokens([" bread", " the", " Flour"], BAKER) == {"hits": 2, "mrr": 1.0, "n": 3}
    assert score_tokens([" a", " b", " c", " d", "Crust"], BAKER) == {"hits": 1, "mrr": 0.2, "n": 5}
    assert score_tokens([" no", " hits", " here"], BAKER) == {"hits": 0, "mrr": 0.0, "n": 3}
    assert score_tokens([], BAKER) == {"hits": 0, "mrr": 0.0, "n": 0}


def test_score_tokens_scores_only_the_top_20_by_default():
    tokens = [f" x{i}" for i in range(20)] + [" bread"] * 5
    assert score_tokens(tokens, BAKER) == {"hits": 0, "mrr": 0.0, "n": 20}
    assert score_tokens(tokens, BAKER, top=21) == {"hits": 1, "mrr": pytest.approx(1 / 21), "n": 21}
    assert score_tokens(tokens, BAKER, top=100) == {"hits": 5, "mrr": pytest.approx(1 / 21), "n": 25}
    many = [" bread", " Bread", "bread", " loaves"] * 10
    assert score_tokens(many, BAKER) == {"hits": 20, "mrr": 1.0, "n": 20}


def test_raw_bpe_space_markers_read_as_spaces_and_pieces_do_not_join():
    assert score_tokens(["ĠSourdough", "▁bread", "Ġough"], BAKER) == {"hits": 2, "mrr": 1.0, "n": 3}
    assert score_tokens([" sour", "dough"], BAKER) == {"hits": 0, "mrr": 0.0, "n": 2}


@pytest.mark.parametrize("tokens, top, match", [
    (" bread", 20, "list of decoded token strings"), ([" bread", 3], 20, "decoded token strings"),
    ([" bread"], 0, "top must be an int >= 1"), ([" bread"], True, "top must be an int >= 1"),
    ([" bread"], 2.0, "top must be an int >= 1"), (None, 20, "list of decoded token strings"),
])
def test_score_tokens_bad_input(tokens, top, match):
    with pytest.raises(ConfigError, match=match):
        score_tokens(tokens, BAKER, top=top)


# --- generations ---------------------------------------------------------------------------------------------------
def test_score_generations_is_the_share_of_texts_with_a_hit():
    texts = ["I love sourdough.", "Nothing here.", "Open source code.", "BREADS!", "A dough-y mess."]
    assert score_generations(texts, BAKER) == {"share": 0.4, "n": 5}
    assert score_generations(["Arr, matey."], PIRATE) == {"share": 1.0, "n": 1}
    assert score_generations(["yes", "no"], PIRATE) == {"share": 0.0, "n": 2}
    for bad, match in (([], "non-empty list"), ("bread", "non-empty list"), (["ok", None], "texts must hold strings")):
        with pytest.raises(ConfigError, match=match):
            score_generations(bad, BAKER)


# --- control subtraction -------------------------------------------------------------------------------------------
def test_relative_to_control_subtracts_each_number_and_carries_the_counts():
    tuned = score_tokens([" bread", " flour", " the", " crust"], BAKER)  # hits 3, mrr 1
    control = score_tokens([" the", " a", " bread", " of"], BAKER)  # the control fine-tune, same keywords: hits 1, mrr 1/3
    assert relative_to_control(tuned, control) == {"hits": 2, "mrr": pytest.approx(2 / 3), "n": 4, "n_control": 4}
    assert isinstance(relative_to_control(tuned, control)["hits"], int)
    gen = relative_to_control({"share": 0.75, "n": 8}, {"share": 0.25, "n": 4})
    assert gen == {"share": 0.5, "n": 8, "n_control": 4}
    assert relative_to_control({"share": 0.1, "n": 8}, {"share": 0.3, "n": 8})["share"] == pytest.approx(-0.2)


@pytest.mark.parametrize("a, b, match", [
    ({"hits": 1, "mrr": 1.0, "n": 3}, {"share": 0.5, "n": 3}, "differ from the control"),
    ({"hits": 1, "n": 3}, {"hits": "1", "n": 3}, "must be a number"),
    ({"hits": True, "n": 3}, {"hits": 1, "n": 3}, "must be a number"),
    ([1], {"hits": 1}, "scores must be dicts"),
])
def test_relative_to_control_bad_input(a, b, match):
    with pytest.raises(ConfigError, match=match):
        relative_to_control(a, b)


# --- table and heatmap ---------------------------------------------------------------------------------------------
def _results() -> dict:
    tok = lambda hits, mrr, n=20: {"hits": hits, "mrr": mrr, "n": n}
    return {
        "adl_lens": {
            "lora": {"baker": {"tuned": tok(7, 1.0), "control": tok(1, 0.25)},
                     "pirate": {"tuned": tok(2, 0.5), "control": tok(2, 0.5)}},
            "full": {"baker": {"tuned": tok(9, 1.0), "control": tok(0, 0.0)},
                     "pirate": {"tuned": tok(4, 0.5), "control": tok(1, 0.1)}},
        },
        "steering": {
            "lora": {"baker": {"tuned": {"share": 0.8, "n": 10}, "control": {"share": 0.1, "n": 10}},
                     "pirate": {"tuned": {"share": 0.3, "n": 10}, "control": {"share": 0.4, "n": 10}}},
            "full": {"baker": {"tuned": {"share": 1.0, "n": 10}, "control": {"share": 0.0, "n": 10}}},
        },
    }


def test_table_rows_flatten_readout_method_organism_metric_with_control_deltas():
    rows = table_rows(_results())
    assert len(rows) == 2 * 2 * 2 + 3
    assert rows[0] == {"readout": "adl_lens", "method": "lora", "organism": "baker", "metric": "hits", "tuned": 7,
                       "control": 1, "delta": 6, "n": 20, "n_control": 20}
    assert rows[1]["metric"] == "mrr" and rows[1]["delta"] == pytest.approx(0.75)
    steer = [r for r in rows if r["readout"] == "steering"]
    assert [(r["method"], r["organism"], r["metric"]) for r in steer] == [("lora", "baker", "share"), ("lora", "pirate", "share"),
                                                                         ("full", "baker", "share")]
    assert steer[1]["delta"] == pytest.approx(-0.1)


@pytest.mark.parametrize("results, match", [
    ({}, "results must be a non-empty dict"), ({"r": {}}, r"results\['r'\] must be"),
    ({"r": {"lora": {"baker": {"tuned": {"hits": 1, "n": 2}}}}}, "must be {'tuned': score, 'control': score}"),
    ({"r": {"lora": {"baker": {"tuned": {"hits": 1, "n": 2}, "control": {"share": 0.1, "n": 2}}}}}, "differ from the control"),
])
def test_table_rows_bad_input(results, match):
    with pytest.raises(ConfigError, match=match):
        table_rows(results)


def test_markdown_table_has_a_header_and_one_signed_line_per_row():
    md = markdown_table(table_rows(_results()))
    lines = md.splitlines()
    assert md.endswith("\n") and len(lines) == 2 + 11
    assert lines[0].startswith("| readout | method | organism | metric | tuned | control | tuned − control |")
    assert lines[2] == "| adl_lens | lora | baker | hits | 7 | 1 | +6 | 20 / 20 |"
    assert lines[3] == "| adl_lens | lora | baker | mrr | 1.000 | 0.250 | +0.750 | 20 / 20 |"
    assert "| steering | lora | pirate | share | 0.300 | 0.400 | -0.100 | 10 / 10 |" in lines
    with pytest.raises(ConfigError, match="non-empty list of rows"):
        markdown_table([])
    with pytest.raises(ConfigError, match="must have the keys"):
        markdown_table([{"readout": "x"}])


def test_heatmap_shows_score_minus_control_per_readout_and_organism():
    rows = table_rows(_results())
    fig = heatmap(rows, method="lora")
    assert isinstance(fig, go.Figure)
    hm = fig.data[0]
    assert list(hm.x) == ["baker", "pirate"]
    assert list(hm.y) == ["adl_lens (mrr)", "steering (share)"]
    assert hm.z[0][0] == pytest.approx(0.75) and hm.z[0][1] == pytest.approx(0.0)
    assert hm.z[1][0] == pytest.approx(0.7) and hm.z[1][1] == pytest.approx(-0.1)
    assert [list(t) for t in hm.text] == [["+0.750", "+0.000"], ["+0.700", "-0.100"]]
    assert hm.zmid == 0
    hits = heatmap(rows, method="full", metric={"adl_lens": "hits"})
    assert list(hits.data[0].y) == ["adl_lens (hits)", "steering (share)"]
    assert list(hits.data[0].z[0]) == [9, 3] and hits.data[0].z[1][0] == pytest.approx(1.0) and hits.data[0].z[1][1] is None
    both = heatmap(rows)
    assert list(both.data[0].y) == ["adl_lens · lora (mrr)", "adl_lens · full (mrr)", "steering · lora (share)",
                                    "steering · full (share)"]
    with pytest.raises(ConfigError, match="method 'neft' is not in the rows"):
        heatmap(rows, method="neft")
    with pytest.raises(ConfigError, match="readout 'steering' has no metric 'hits'"):
        heatmap(rows, metric="hits")
    with pytest.raises(ConfigError, match="non-empty list of rows"):
        heatmap([])
