"""Chats through the tokenizer's own chat template, and where the assistant turns are in the tokens.

:func:`assistant_token_mask` renders the chat with ``apply_chat_template`` and finds every assistant turn's
character span by rendering prefixes: turn ``i`` starts where ``messages[:i]`` rendered with the generation
prompt ends, and ends where ``messages[:i + 1]`` rendered ends (so the span holds the turn's content and the
template's end-of-turn tokens, e.g. SmolLM2's ``<|im_end|>\\n`` -- what the model must learn to emit to stop).
When a template does not render prefixes as prefixes of the full chat (some re-render earlier turns), the span
falls back to the turn's content, found in order in the rendered text. Tokens overlapping a span get mask 1.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import ConfigError

__all__ = ["assistant_token_mask", "check_chat_template", "render_chat"]


def check_chat_template(tokenizer: Any, where: str = "") -> None:
    """Raises ConfigError (naming ``where``) unless ``tokenizer`` has a chat template."""
    head = f"{where + ': ' if where else ''}chat-shaped data ('messages') is rendered with the tokenizer's chat template"
    if tokenizer is None:
        raise ConfigError(f"{head}, and no tokenizer was given; pass the model's tokenizer (one that has a chat template), "
                          "or convert the data to the prompt/completion shape")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise ConfigError(f"{head}, and the tokenizer {name!r} has none; use a model whose tokenizer has a chat template, "
                          "convert the data to the prompt/completion shape, or set tokenizer.chat_template")


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The chat as text, rendered by the tokenizer's chat template.

    Raises:
        ConfigError: no chat template, or the template refuses the chat (e.g. roles out of order).
    """
    check_chat_template(tokenizer)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError and others from inside templates
        raise ConfigError(f"the chat template refused this chat ({type(exc).__name__}: {exc})") from exc
    if not isinstance(text, str):
        raise ConfigError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not text")
    return text


def _spans(tokenizer: Any, messages: list[dict[str, str]], full: str, where: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the assistant turns in ``full``."""
    spans, cursor = [], 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        span = None
        if i > 0:
            pre = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
            post = render_chat(tokenizer, messages[: i + 1])
            if full.startswith(pre) and full.startswith(post) and len(post) > len(pre) >= cursor:
                span = (len(pre), len(post))
        if span is None:  # fallback: the content itself, in order
            at = full.find(msg["content"], cursor)
            if at < 0 or not msg["content"]:
                raise ConfigError(f"{where}: cannot find assistant turn {i} in the chat template's rendering")
            span = (at, at + len(msg["content"]))
        spans.append(span)
        cursor = span[1]
    return spans


def assistant_token_mask(tokenizer: Any, messages: list[dict[str, str]], *, prepend_bos: bool, where: str = "") -> tuple[list[int], list[int]]:
    """``(ids, mask)``: the chat's token ids (``[pos]``) and 1 on the tokens of assistant turns, 0 elsewhere.

    The rendered text is tokenized without special tokens added (the template writes its own); with
    ``prepend_bos`` the BOS id is put first unless the rendering already starts with it. A fast tokenizer
    maps spans through its offsets; a slow one by tokenizing the text up to each span boundary.

    Raises:
        ConfigError: no chat template (naming ``where``), a template that refuses the chat, or an assistant
            turn that cannot be located.
    """
    check_chat_template(tokenizer, where)
    full = render_chat(tokenizer, messages)
    spans = _spans(tokenizer, messages, full, where)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        mask = [int(any((s < e2 and e > s2) or (s == e and s2 <= s < e2) for s2, e2 in spans)) for s, e in offsets]
    else:
        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
        mask = [0] * len(ids)
        for s, e in spans:
            for k in range(count(full[:s]), min(count(full[:e]), len(ids))):
                mask[k] = 1
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids, mask = [bos, *ids], [0, *mask]
    if not any(mask):
        raise ConfigError(f"{where}: the chat's assistant turns hold no tokens after rendering")
    return ids, mask
