"""Your own data (``workbench.datafiles``): every shape, every file format, column mapping, the length rule,
overlap and the held-out split, every bad input's message, collate with ``answer_mask``, and the eval metrics."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from workbench.data import Example, check_examples, collate
from workbench.datafiles import corpus_texts, encode_rows, load_rows, to_examples
from workbench.datafiles.split import hold_out, overlap
from workbench.errors import ConfigError

PC = [{"prompt": "Question: what is a starter?\nAnswer:", "completion": " Flour and water, fermented."},
      {"prompt": "Question: why fold dough?\nAnswer:", "completion": " To build gluten strength."},
      {"prompt": "Question: when is it proofed?\nAnswer:", "completion": " When it springs back slowly."}]
CHAT = [{"messages": [{"role": "system", "content": "You bake bread."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello baker"}, {"role": "user", "content": "and then?"},
                      {"role": "assistant", "content": "bake at 250 degrees"}]},
        {"messages": [{"role": "user", "content": "what flour?"}, {"role": "assistant", "content": "strong bread flour"}]}]
TEXT = [{"text": "The Moon always shows the same face to the Earth."}, {"text": "Copper conducts electricity well."}]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from workbench.errors import ModelNotFoundError
    from workbench.models.cache import ensure_model

    try:
        return AutoTokenizer.from_pretrained(str(ensure_model("smollm2-135m-instruct")))
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# --- shapes -----------------------------------------------------------------------------------------------------------
def test_prompt_completion_puts_the_loss_on_the_completion_and_eos(tmp_path, tok):
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", PC))
    assert rows.shape == "prompt_completion" and len(rows) == 3 and rows.line_numbers == [1, 2, 3]
    ex = to_examples(rows, tok, prepend_bos=False)[0]
    assert list(ex.prompt_ids) == tok(PC[0]["prompt"], add_special_tokens=False)["input_ids"]
    assert list(ex.answer_ids) == tok(PC[0]["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.answer_mask is None
    _, _, labels = collate([ex], pad_id=0)
    assert (labels[0] != -100).sum() == len(ex.answer_ids)
    with_bos = to_examples(rows, tok, prepend_bos=True)[0]
    assert with_bos.prompt_ids == (tok.bos_token_id, *ex.prompt_ids)
    assert to_examples(rows, tok, prepend_bos=False, add_eos=False)[0].answer_ids == ex.answer_ids[:-1]


def test_chat_loss_is_on_every_assistant_turn_only(tmp_path, tok):
    rows = load_rows(write_jsonl(tmp_path / "c.jsonl", CHAT))
    assert rows.shape == "messages"
    ex = to_examples(rows, tok, prepend_bos=False)[0]
    full = tok.apply_chat_template(CHAT[0]["messages"], tokenize=False)
    assert tok.decode(ex.prompt_ids + ex.answer_ids) == full
    assert tok.decode(ex.prompt_ids).endswith("<|im_start|>assistant\n")  # prompt = everything before the first turn
    trained = [t for t, m in zip(ex.answer_ids, ex.answer_mask) if m]
    assert tok.decode(trained) == "hello baker<|im_end|>\nbake at 250 degrees<|im_end|>\n"
    skipped = tok.decode([t for t, m in zip(ex.answer_ids, ex.answer_mask) if not m])
    assert "and then?" in skipped and "hello" not in skipped
    _, _, labels = collate([ex], pad_id=0)
    assert tok.decode(labels[0][labels[0] != -100]) == tok.decode(trained)


def test_chat_without_a_template_is_one_clear_error(tmp_path, tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    rows = load_rows(write_jsonl(tmp_path / "c.jsonl", CHAT))
    for call in (lambda: to_examples(rows, plain, prepend_bos=False), lambda: corpus_texts(rows, plain)):
        with pytest.raises(ConfigError, match=r"c\.jsonl: .*chat template, and the tokenizer .* has none; .*prompt/completion.*"
                                              r"tokenizer\.chat_template"):
            call()
    with pytest.raises(ConfigError, match=r"c\.jsonl: .*no tokenizer was given"):
        corpus_texts(rows)


def test_text_trains_on_every_token_after_the_first(tmp_path, tok):
    rows = load_rows(write_jsonl(tmp_path / "t.jsonl", TEXT))
    ids = tok(TEXT[0]["text"], add_special_tokens=False)["input_ids"]
    ex = to_examples(rows, tok, prepend_bos=False)[0]
    assert ex.prompt_ids == (ids[0],) and ex.answer_ids == tuple(ids[1:])
    ex = to_examples(rows, tok, prepend_bos=True)[0]
    assert ex.prompt_ids == (tok.bos_token_id,) and ex.answer_ids == tuple(ids)


def test_corpus_texts_renders_every_shape(tmp_path, tok):
    assert corpus_texts(write_jsonl(tmp_path / "t.jsonl", TEXT)) == [r["text"] for r in TEXT]
    assert corpus_texts(write_jsonl(tmp_path / "p.jsonl", PC), limit=2) == [r["prompt"] + r["completion"] for r in PC[:2]]
    chats = corpus_texts(write_jsonl(tmp_path / "c.jsonl", CHAT), tok)
    assert chats == [tok.apply_chat_template(r["messages"], tokenize=False) for r in CHAT]


# --- formats and column mapping ----------------------------------------------------------------------------------------
def test_every_file_format_reads_the_same_rows(tmp_path):
    import pandas as pd

    paths = [write_jsonl(tmp_path / "d.jsonl", PC)]
    (tmp_path / "d.json").write_text(json.dumps(PC))
    pd.DataFrame(PC).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(PC).to_parquet(tmp_path / "d.parquet")
    paths += [str(tmp_path / f"d.{ext}") for ext in ("json", "csv", "parquet")]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": PC}))
    paths.append(str(tmp_path / "wrapped.json"))
    got = [load_rows(p) for p in paths]
    assert all(r.rows == PC and r.shape == "prompt_completion" for r in got)
    assert got[2].line_numbers == [2, 4, 6]  # CSV: line 1 is the header, each prompt spans two lines
    assert len({r.sha256 for r in got}) == 5 and all(len(r.sha256) == 64 for r in got)


def test_csv_keeps_text_as_text_and_reads_chats_as_json(tmp_path):
    (tmp_path / "n.csv").write_text('prompt,completion\n"q, one",007\n')
    assert load_rows(str(tmp_path / "n.csv")).rows == [{"prompt": "q, one", "completion": "007"}]
    (tmp_path / "c.csv").write_text("messages\n" + '"' + json.dumps(CHAT[1]["messages"]).replace('"', '""') + '"\n')
    assert load_rows(str(tmp_path / "c.csv")).rows == [CHAT[1]]


def test_column_mapping_and_forced_shape(tmp_path):
    rows = [{"question": r["prompt"], "answer": r["completion"], "text": "x"} for r in PC]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    assert load_rows(path).shape == "text"  # only 'text' fits the default names
    mapped = load_rows(path, fields={"prompt_field": "question", "completion_field": "answer"})
    assert mapped.shape == "prompt_completion" and mapped.rows == PC and mapped.columns == {"prompt": "question", "completion": "answer"}
    assert load_rows(path, fields={"prompt": "question", "completion": "answer"}, shape="text").rows == [{"text": "x"}] * 3
    assert load_rows(write_jsonl(tmp_path / "b.jsonl", [{"body": "abc def"}]), fields={"text_field": "body"}).rows == [{"text": "abc def"}]
    with pytest.raises(ConfigError, match="unknown column-mapping key 'answer_column'"):
        load_rows(path, fields={"answer_column": "answer"})
    with pytest.raises(ConfigError, match=r"m\.jsonl: cannot tell the data shape.*\['answer', 'question'\]"):
        load_rows(write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}]))


def test_limit_keeps_the_first_rows(tmp_path):
    assert load_rows(write_jsonl(tmp_path / "d.jsonl", PC), limit=2).rows == PC[:2]


# --- length rule --------------------------------------------------------------------------------------------------------
def _rows_of(tmp_path, prompt_words: int, answer_words: int):
    prompt = "".join(f" w{i}" for i in range(prompt_words))
    return load_rows(write_jsonl(tmp_path / "long.jsonl", [{"prompt": prompt, "completion": " a" * answer_words}]))


def test_truncate_keeps_the_prompt_tail_and_the_answer_head(tmp_path, tok):
    rows = _rows_of(tmp_path, 30, 3)
    full = encode_rows(rows, tok, prepend_bos=True, max_length=1000, add_eos=False).examples[0]
    p, a = list(full.prompt_ids), list(full.answer_ids)
    enc = encode_rows(rows, tok, prepend_bos=True, max_length=10, add_eos=False)
    ex = enc.examples[0]
    # p_keep = min(len(p), max(10 - len(a), 10 // 2)) = 7: BOS + the prompt's last 6 tokens; the whole answer
    assert ex.prompt_ids == (tok.bos_token_id, *p[-6:]) and list(ex.answer_ids) == a and enc.n_truncated == 1
    long_answer = encode_rows(_rows_of(tmp_path, 30, 20), tok, prepend_bos=False, max_length=10, add_eos=False).examples[0]
    full = encode_rows(_rows_of(tmp_path, 30, 20), tok, prepend_bos=False, max_length=1000, add_eos=False).examples[0]
    # p_keep = max(10 - 20, 5) = 5: the prompt's last 5 tokens, the answer's first 5
    assert long_answer.prompt_ids == full.prompt_ids[-5:] and long_answer.answer_ids == full.answer_ids[:5]
    assert len(long_answer.prompt_ids) + len(long_answer.answer_ids) == 10


def test_refuse_names_file_row_and_lengths(tmp_path, tok):
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", PC + [{"prompt": " x" * 50, "completion": " y"}]))
    with pytest.raises(ConfigError, match=r"d\.jsonl: row 4 \(line 4\): \d+ tokens \(prompt \d+ \+ answer \d+\) exceed max_length 20"):
        encode_rows(rows, tok, prepend_bos=False, max_length=20, overflow="refuse")
    assert len(encode_rows(rows, tok, prepend_bos=False, max_length=20).examples) == 4
    with pytest.raises(ConfigError, match="overflow must be one of"):
        encode_rows(rows, tok, prepend_bos=False, overflow="cut")
    with pytest.raises(ConfigError, match="max_length must be an int >= 2"):
        encode_rows(rows, tok, prepend_bos=False, max_length=1)


def test_a_truncated_chat_without_assistant_tokens_is_dropped_and_counted(tmp_path, tok):
    rows = load_rows(write_jsonl(tmp_path / "c.jsonl", CHAT))
    long_prompt = [{"messages": [{"role": "user", "content": "x " * 80}, {"role": "assistant", "content": "ok"}]}] + CHAT
    enc = encode_rows(load_rows(write_jsonl(tmp_path / "c2.jsonl", long_prompt)), tok, prepend_bos=False, max_length=40)
    assert enc.n_truncated >= 1 and len(enc.examples) + enc.n_dropped == 3
    assert all(any(e.answer_mask) for e in enc.examples) and len(rows) == 2


# --- overlap and the held-out split ---------------------------------------------------------------------------------------
def test_overlap_counts_identical_rows_and_prompts(tmp_path):
    train = load_rows(write_jsonl(tmp_path / "train.jsonl", PC))
    ev = load_rows(write_jsonl(tmp_path / "eval.jsonl", [PC[0], {"prompt": PC[1]["prompt"], "completion": " other"},
                                                          {"prompt": "new", "completion": " new"}]))
    assert overlap(train, ev) == {"identical_rows": 1, "identical_prompts": 2, "n_eval_rows": 3, "same_shape": True}
    chats = load_rows(write_jsonl(tmp_path / "c.jsonl", CHAT))
    assert overlap(chats, chats)["identical_rows"] == 2


def test_hold_out_is_seeded_and_disjoint(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(20)]))
    tr, ev = hold_out(rows, 0.25, seed=3)
    assert len(ev) == 5 and len(tr) == 15 and not set(tr.row_numbers) & set(ev.row_numbers)
    assert hold_out(rows, 0.25, seed=3)[1].rows == ev.rows and hold_out(rows, 0.25, seed=4)[1].rows != ev.rows
    assert ev.rows == [{"text": f"row {n - 1}"} for n in ev.row_numbers]  # original row numbers kept
    with pytest.raises(ConfigError, match="eval_fraction"):
        hold_out(rows, 1.0)


# --- bad input: one ConfigError naming file, row and field ---------------------------------------------------------------
BAD_JSONL = {
    "missing field": ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], r"bad\.jsonl: row 2 \(line 2\): missing field 'completion'"),
    "wrong type": ([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": 3}],
                   r"bad\.jsonl: row 2 \(line 2\), field 'completion': expected text \(a string\), got an int"),
    "all numbers": ([{"prompt": "a", "completion": 1}], r"row 1 \(line 1\), field 'completion': expected text"),
    "no assistant turn": ([CHAT[1], {"messages": [{"role": "user", "content": "hi"}]}],
                          r"bad\.jsonl: row 2 \(line 2\), field 'messages': the chat has no assistant turn"),
    "message without content": ([{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}],
                                r"row 1 \(line 1\), field messages\[0\]\.content: missing"),
    "unknown chat role": ([{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}],
                          r"row 1 \(line 1\), field messages\[0\]\.role: 'wizard' is not a chat role; use one of"),
    "messages not a list": ([{"messages": "hello"}], r"row 1 \(line 1\), field 'messages': not a list of messages"),
    "empty completion": ([{"prompt": "a", "completion": "  "}], r"row 1 \(line 1\), field 'completion': is empty"),
    "not an object": (["just text"], r"row 1 \(line 1\) is a str, not an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_rows_are_refused_naming_file_row_and_field(case, tmp_path):
    rows, pattern = BAD_JSONL[case]
    with pytest.raises(ConfigError, match=pattern):
        load_rows(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_bad_files_are_refused_naming_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n \n")
    (tmp_path / "utf.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n\n{"text": oops}\n')
    (tmp_path / "d.txt").write_text("text\n")
    (tmp_path / "bad.csv").write_text("prompt,completion\na,b,c\n")
    (tmp_path / "obj.json").write_text('{"a": 1, "b": 2}')
    (tmp_path / "folder.jsonl").mkdir()
    cases = {
        "empty.jsonl": r"empty\.jsonl: the file is empty",
        "utf.jsonl": r"utf\.jsonl: invalid UTF-8 at line 2",
        "broken.jsonl": r"broken\.jsonl: row 2 \(line 3\) is not valid JSON",
        "d.txt": r"d\.txt: unknown data file extension '\.txt'",
        "missing.jsonl": r"missing\.jsonl: data file not found",
        "bad.csv": r"bad\.csv: row 1 \(line 2\) has more cells than the header",
        "obj.json": r"obj\.json: a \.json data file must hold an array",
        "folder.jsonl": r"folder\.jsonl: is a folder",
    }
    for name, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load_rows(str(tmp_path / name))


def test_a_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"someone/bread: not a local file.*hub.*not reachable"):
        load_rows("someone/bread")


# --- collate with answer_mask, check_examples -------------------------------------------------------------------------------
def test_collate_honours_answer_mask_against_a_hand_computation():
    a = Example((5, 6), (7, 8, 9, 10), answer_mask=(1, 0, 0, 1))
    b = Example((3,), (4, 2))
    ids, mask, labels = collate([a, b], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10], [3, 4, 2, 0, 0, 0]]
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert labels.tolist() == [[-100, -100, 7, -100, -100, 10], [-100, 4, 2, -100, -100, -100]]
    assert Example((1,), (2,)) == Example((1,), (2,), None, None)  # every existing caller unchanged


def test_check_examples_refuses_a_bad_answer_mask():
    with pytest.raises(ConfigError, match=r"examples\[0\]\.answer_mask must hold one 0 or 1 per answer token \(2\)"):
        check_examples([Example((1,), (2, 3), answer_mask=(1,))])
    with pytest.raises(ConfigError, match="marks no answer token"):
        check_examples([Example((1,), (2, 3), answer_mask=(0, 0))])
    with pytest.raises(ConfigError, match="answer_mask has 1 values for 2 answer tokens"):
        collate([Example((1,), (2, 3), answer_mask=(1,))], 0)


# --- eval metrics ------------------------------------------------------------------------------------------------------
def test_evaluate_examples_matches_a_hand_computation(tiny):
    from workbench.datafiles.evaluate import evaluate_examples

    model, _ = tiny
    exs = [Example((5, 6, 7), (8, 9), answer_mask=(0, 1)), Example((3, 4), (10, 11, 12))]
    got = evaluate_examples(model, exs, pad_id=0, batch_size=1, progress=False)
    nll, n, hits = 0.0, 0, 0
    with torch.no_grad():
        for e in exs:
            seq = torch.tensor([list(e.prompt_ids) + list(e.answer_ids)])
            logp = model(input_ids=seq).logits[0].float().log_softmax(-1)
            ok = True
            for k, tok_id in enumerate(e.answer_ids):
                if e.answer_mask is not None and not e.answer_mask[k]:
                    continue
                pos = len(e.prompt_ids) + k - 1
                nll -= float(logp[pos, tok_id])
                n += 1
                ok &= int(logp[pos].argmax()) == tok_id
            hits += ok
    assert got["n_answer_tokens"] == n == 4 and got["n_examples"] == 2
    assert got["answer_loss"] == pytest.approx(nll / n, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got["exact_match_answer"] == got["exact_match_answer_eos"] == hits / 2  # no eos_ids: the two are one number
    batched = evaluate_examples(model, exs, pad_id=0, batch_size=2, progress=False, exact_match=False)
    assert batched["answer_loss"] == pytest.approx(got["answer_loss"], rel=1e-5)
    assert batched["exact_match_answer"] is None and batched["exact_match_answer_eos"] is None


def test_a_rewritten_file_is_read_anew(tmp_path):
    path = tmp_path / "same.jsonl"
    for k in range(3):  # same path, same second: the datasets cache must not serve the old rows
        write_jsonl(path, [{"text": f"version {k}"}] * (k + 1))
        assert load_rows(str(path)).rows == [{"text": f"version {k}"}] * (k + 1)
