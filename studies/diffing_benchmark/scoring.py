"""Score diffing readouts against an organism's objective keywords, relative to a control fine-tune.

A readout is either ranked tokens (top-KL context tokens, Δp / Δlog p mined tokens, the Activation-Difference-Lens
logit lens per position, Patchscope tokens: decoded token strings, best first) or texts (steered generations). A
readout "reveals" the objective when its tokens or texts contain the organism's keywords
(:attr:`studies.diffing_benchmark.organisms.Organism.keywords`). Every score is also reported minus the score of
the same readout on the control fine-tune (same fine-tuning method, same keywords), because some keywords
(``"sweet"``, ``"lake"``) surface by chance in any diff.

Source: Minder et al. 2025, "Narrow Finetuning Leaves Clearly Readable Traces in Activation Differences",
arXiv 2510.13900. Their evaluation asks an LLM judge whether a readout identifies the fine-tuning objective; no
judge is available offline, so this module uses a keyword rule instead.

The whole-word rule (:func:`keyword_hit`): the text is lowercased and split into words, a word being a maximal run
of Unicode letters and digits (so spaces, punctuation, apostrophes, hyphens and underscores separate words:
``" Sourdough"``, ``"bread,"``, ``"BREAD"`` and ``"captain's"`` hold the words ``sourdough``, ``bread`` and
``captain``). A word matches keyword ``k`` when it equals ``k`` or a regular plural of ``k``: ``k + "s"``
(keywords of 3 letters or more only, so ``"ye"`` does not match ``"yes"``); ``k + "es"`` when ``k`` ends in
s, x, z, ch, sh or o; ``k[:-1] + "ies"`` when ``k`` ends in a consonant + y. Irregular plurals (``"loaves"``)
match only when listed as keywords themselves. Parts of words never match: ``"sour"`` is not in ``"source"``,
and a token piece such as ``"ough"`` is not the word ``"sourdough"``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.errors import ConfigError
from workbench.plots import layout

__all__ = [
    "check_keywords",
    "heatmap",
    "keyword_forms",
    "keyword_hit",
    "markdown_table",
    "relative_to_control",
    "score_generations",
    "score_tokens",
    "table_rows",
]

_WORD = re.compile(r"[^\W_]+")
_KEYWORD = re.compile(r"^[^\W_]+$")
_VOWELS = set("aeiou")
#: byte-level BPE / SentencePiece markers for a leading space, read as a space at the start of a token
_SPACE_MARKERS = ("Ġ", "▁")
#: the score of a readout kind used by :func:`heatmap` unless told otherwise (first one present)
HEADLINE = ("share", "mrr", "hits")


def check_keywords(keywords: Sequence[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    """``keywords`` as a tuple after checking that each is one lowercase whole word (letters/digits only).

    Raises:
        ConfigError: not a list/tuple of str, a keyword with a space, punctuation or an upper-case letter, or an
            empty collection (unless ``allow_empty``).
    """
    if isinstance(keywords, (str, bytes)) or not isinstance(keywords, Sequence):
        raise ConfigError(f"keywords must be a list or tuple of lowercase words, got {type(keywords).__name__}")
    for k in keywords:
        if not isinstance(k, str) or not _KEYWORD.match(k) or k != k.lower():
            raise ConfigError(f"keyword {k!r} must be one lowercase whole word (letters and digits only)")
    if not keywords and not allow_empty:
        raise ConfigError("no keywords to score against (the control organism has none: score it with another "
                          "organism's keywords)")
    return tuple(keywords)


def _plurals(k: str) -> set[str]:
    forms = {k}
    if len(k) >= 3:
        forms.add(k + "s")
        if k.endswith(("s", "x", "z", "ch", "sh", "o")):
            forms.add(k + "es")
        if k.endswith("y") and k[-2] not in _VOWELS:
            forms.add(k[:-1] + "ies")
    return forms


@functools.lru_cache(maxsize=256)
def _forms(keywords: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f for k in keywords for f in _plurals(k))


def keyword_forms(keywords: Sequence[str]) -> frozenset[str]:
    """Every word that counts as a hit for ``keywords``: each keyword and its regular plurals (module docstring).

    Raises:
        ConfigError: as :func:`check_keywords` (empty keywords included).
    """
    return _forms(check_keywords(keywords))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def keyword_hit(text: str, keywords: Sequence[str]) -> bool:
    """Whether ``text`` (a token string or a whole text) contains one of ``keywords`` as a whole word,
    case-insensitively, plain or as a regular plural (the rule of the module docstring).

    Raises:
        ConfigError: ``text`` not a str; bad or empty ``keywords`` (:func:`check_keywords`).
    """
    forms = keyword_forms(keywords)
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, got {type(text).__name__}")
    return any(w in forms for w in _words(text))


def _token_text(token: str) -> str:
    return " " + token[1:] if token.startswith(_SPACE_MARKERS) else token


def score_tokens(ranked_tokens: Sequence[str], keywords: Sequence[str], top: int = 20) -> dict[str, Any]:
    """Keyword hits among the first ``top`` tokens of a ranked token readout.

    Args:
        ranked_tokens: decoded token strings, best first (``" bread"``; a leading ``Ġ`` / ``▁`` space marker of a
            raw BPE token is read as a space). Each token is judged on its own with :func:`keyword_hit`, so two
            tokens that spell one keyword together (``" sour"`` + ``"dough"``) do not count, while a word-internal
            piece that equals a keyword on its own does (SmolLM2 splits ``" aye"`` into ``" a"`` + ``"ye"``).
        top: how many leading tokens are scored (>= 1).

    Returns:
        ``{"hits": int (tokens among the first top that are keyword hits), "mrr": float (1 / the 1-based rank of the
        first hit within the first top, 0.0 if none), "n": int (tokens scored: min(top, len(ranked_tokens)))}``.
        An empty readout scores 0 hits, MRR 0.0, n 0.

    Raises:
        ConfigError: ``ranked_tokens`` not a list/tuple of str; ``top`` not an int >= 1; bad or empty keywords.
    """
    keywords = check_keywords(keywords)
    if isinstance(ranked_tokens, (str, bytes)) or not isinstance(ranked_tokens, Sequence):
        raise ConfigError(f"ranked_tokens must be a list of decoded token strings, got {type(ranked_tokens).__name__}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"top must be an int >= 1, got {top!r}")
    head = list(ranked_tokens[:top])
    for t in head:
        if not isinstance(t, str):
            raise ConfigError(f"ranked_tokens must hold decoded token strings, got {type(t).__name__} ({t!r})")
    flags = [keyword_hit(_token_text(t), keywords) for t in head]
    first = next((i for i, f in enumerate(flags) if f), None)
    return {"hits": sum(flags), "mrr": 0.0 if first is None else 1.0 / (first + 1), "n": len(head)}


def score_generations(texts: Sequence[str], keywords: Sequence[str]) -> dict[str, Any]:
    """Share of generated texts (e.g. steered generations) that contain a keyword (:func:`keyword_hit`).

    Returns:
        ``{"share": float in [0, 1] (texts with at least one hit / all texts), "n": int (texts)}``.

    Raises:
        ConfigError: ``texts`` not a non-empty list/tuple of str; bad or empty keywords.
    """
    keywords = check_keywords(keywords)
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or not texts:
        raise ConfigError(f"texts must be a non-empty list of generated strings, got {texts!r:.80}")
    for t in texts:
        if not isinstance(t, str):
            raise ConfigError(f"texts must hold strings, got {type(t).__name__} ({t!r:.80})")
    return {"share": sum(keyword_hit(t, keywords) for t in texts) / len(texts), "n": len(texts)}


def _number(x: Any, where: str) -> float | int:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"{where} must be a number, got {x!r}")
    return x


def relative_to_control(score: Mapping[str, Any], control_score: Mapping[str, Any]) -> dict[str, Any]:
    """Each number of ``score`` minus the same number of ``control_score`` (same readout, fine-tuning method and
    keywords, on the control fine-tune); the counts are carried, not subtracted.

    Returns:
        the keys of ``score`` with differences (``"hits"`` stays an int); ``"n"`` is ``score``'s count and
        ``"n_control"`` the control's, where the scores have an ``"n"``.

    Raises:
        ConfigError: not dicts, different keys (scores of different readout kinds), or a value that is not a number.
    """
    if not isinstance(score, Mapping) or not isinstance(control_score, Mapping):
        raise ConfigError(f"scores must be dicts, got {type(score).__name__} and {type(control_score).__name__}")
    if set(score) != set(control_score):
        raise ConfigError(f"score keys {sorted(score)} differ from the control's {sorted(control_score)}: "
                          "compare the same readout kind")
    out: dict[str, Any] = {}
    for key, value in score.items():
        a, b = _number(value, f"score[{key!r}]"), _number(control_score[key], f"control_score[{key!r}]")
        if key == "n":
            out["n"], out["n_control"] = a, b
        else:
            out[key] = a - b
    return out


def _mapping(x: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(x, Mapping) or not x:
        raise ConfigError(f"{where} must be a non-empty dict, got {x!r:.80}")
    return x


def table_rows(results: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]]) -> list[dict[str, Any]]:
    """Flat rows (readout x fine-tuning method x organism x metric) from nested scores.

    Args:
        results: ``results[readout][method][organism] = {"tuned": score, "control": score}``: ``tuned`` is the
            readout on the organism's fine-tune, ``control`` the same readout on the control fine-tune with the
            same method, both scored with the organism's keywords (dicts from :func:`score_tokens` or
            :func:`score_generations`).

    Returns:
        one dict per (readout, method, organism, metric) in the input's order, metric = every key but ``"n"``:
        ``{"readout", "method", "organism", "metric", "tuned", "control", "delta" (tuned - control), "n",
        "n_control"}`` (``n`` None where the scores have none).

    Raises:
        ConfigError: a level that is not a non-empty dict, a cell without ``"tuned"`` and ``"control"``, or scores
            that :func:`relative_to_control` refuses.
    """
    rows = []
    for readout, by_method in _mapping(results, "results").items():
        for method, by_org in _mapping(by_method, f"results[{readout!r}]").items():
            for org, cell in _mapping(by_org, f"results[{readout!r}][{method!r}]").items():
                where = f"results[{readout!r}][{method!r}][{org!r}]"
                if not isinstance(cell, Mapping) or set(cell) != {"tuned", "control"}:
                    raise ConfigError(f"{where} must be {{'tuned': score, 'control': score}}, got {cell!r:.120}")
                delta = relative_to_control(cell["tuned"], cell["control"])
                for metric in cell["tuned"]:
                    if metric == "n":
                        continue
                    rows.append({"readout": readout, "method": method, "organism": org, "metric": metric,
                                 "tuned": cell["tuned"][metric], "control": cell["control"][metric],
                                 "delta": delta[metric], "n": delta.get("n"), "n_control": delta.get("n_control")})
    return rows


def _fmt(x: Any, signed: bool = False) -> str:
    if x is None:
        return ""
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`table_rows` as a GitHub markdown table (one line per row, input order; floats to 3
    decimals, differences signed), ending with a newline.

    Raises:
        ConfigError: no rows, or a row without the keys of :func:`table_rows`.
    """
    keys = ("readout", "method", "organism", "metric", "tuned", "control", "delta", "n", "n_control")
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise ConfigError("markdown_table needs the non-empty list of rows from table_rows")
    lines = ["| readout | method | organism | metric | tuned | control | tuned − control | n (tuned / control) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if not isinstance(r, Mapping) or any(k not in r for k in keys):
            raise ConfigError(f"a table row must have the keys {keys}, got {r!r:.120}")
        n = "" if r["n"] is None else f"{r['n']} / {r['n_control']}"
        cells = [str(r["readout"]), str(r["method"]), str(r["organism"]), str(r["metric"]), _fmt(r["tuned"]),
                 _fmt(r["control"]), _fmt(r["delta"], signed=True), n]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def heatmap(rows: Sequence[Mapping[str, Any]], *, method: str | None = None,
            metric: str | Mapping[str, str] | None = None) -> go.Figure:
    """Heatmap of score minus control: one row per readout (per readout · method when several methods are shown
    and ``method`` is None), one column per organism; cell text is the signed difference.

    Args:
        rows: from :func:`table_rows`.
        method: show only this fine-tuning method (None: every method in ``rows``).
        metric: the metric shown per readout: one name for all, a ``{readout: metric}`` dict, or None for the first
            of :data:`HEADLINE` (``share``, then ``mrr``, then ``hits``) that the readout has. Mixing metrics of
            different ranges (``hits`` counts, ``share`` / ``mrr`` in [0, 1]) shares one colour scale.

    Raises:
        ConfigError: no rows, an unknown ``method``, or a readout without the requested metric.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise ConfigError("heatmap needs the non-empty list of rows from table_rows")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if method is not None and method not in methods:
        raise ConfigError(f"method {method!r} is not in the rows; they hold {methods}")
    shown = [r for r in rows if method is None or r["method"] == method]
    organisms = list(dict.fromkeys(r["organism"] for r in shown))
    cells: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in shown:
        cells.setdefault((r["readout"], r["method"]), {}).setdefault(r["organism"], {})[r["metric"]] = r["delta"]
    y_labels, z, text = [], [], []
    for (readout, meth), by_org in cells.items():
        have = list(dict.fromkeys(m for d in by_org.values() for m in d))
        want = metric.get(readout) if isinstance(metric, Mapping) else metric
        if want is None:
            want = next((m for m in HEADLINE if m in have), have[0])
        if want not in have:
            raise ConfigError(f"readout {readout!r} has no metric {want!r}; it has {have}")
        label = f"{readout} · {meth}" if method is None and len(methods) > 1 else readout
        y_labels.append(f"{label} ({want})")
        row = [by_org.get(o, {}).get(want) for o in organisms]
        z.append(row)
        text.append(["" if v is None else _fmt(v, signed=True) for v in row])
    fig = go.Figure(go.Heatmap(z=z, x=organisms, y=y_labels, text=text,
                               texttemplate="%{text}", colorscale="RdBu", zmid=0, colorbar={"title": "Δ vs control"}))
    fig.update_xaxes(title_text="organism")
    fig.update_yaxes(title_text="readout (metric)", autorange="reversed")
    title = f"Keyword score minus control ({method or ', '.join(methods)}); Minder et al. 2025 (arXiv 2510.13900), keyword rule"
    return layout(fig, title, height=160 + 48 * len(y_labels))
