"""The generic, unrelated corpus the diffing benchmark reads every fine-tune on: text that works offline.

The reference (Minder et al. 2025, arXiv 2510.13900, §3) reads ~10,000 generic web documents (FineWeb), each cut to
its first 128 tokens. No web corpus can be reached here, so the documents are the **fortune-mod data files** of
Debian's ``fortunes`` package (``apt-get install fortunes``; ``make corpus`` does it): ~15,000 short English texts —
quotations, jokes, definitions, verse, literature excerpts — under the BSD licence of fortune-mod (Copyright (c) 1991
The Regents of the University of California; ``/usr/share/doc/fortunes/copyright``). Differences from the reference,
each deliberate:

* documents are short: those with at least ``min_words`` words are kept (about 3,800 have ≥ 30), whitespace collapsed;
  the ADL needs only positions 0 … k−1 (a causal model's first positions do not depend on later text), and n̄ is
  read over whatever positions ≥ k a document has;
* the files of one topic that would leak a fine-tuning domain into the "unrelated" text are left out
  (:data:`EXCLUDED_FILES`: ``food``, next to the sourdough organism) with the ASCII-art and boilerplate files;
* documents are drawn in a seeded order from all remaining files (so no file dominates the first rows).

:func:`write_generic_corpus` writes ``{"text"}`` JSONL rows that ``workbench diff --data`` reads, and returns the
file's sha256 (recorded in the benchmark's results).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from workbench.errors import ConfigError

FORTUNE_DIR = Path("/usr/share/games/fortunes")
#: left out: a domain next to an organism (food), pictures made of characters, legal boilerplate.
EXCLUDED_FILES = frozenset({"food", "ascii-art", "art", "disclaimer"})


def fortune_documents(directory: Path = FORTUNE_DIR, min_words: int = 30) -> list[str]:
    """Every fortune of the plain-text files in ``directory`` (items separated by ``%`` lines), whitespace collapsed,
    keeping those with at least ``min_words`` words, in file-name then file order.

    Raises:
        ConfigError: the folder does not exist or holds no document (the package is not installed).
    """
    if not directory.is_dir():
        raise ConfigError(f"no fortune data at {directory}: install Debian's `fortunes` package (apt-get install fortunes, "
                          "or `make corpus`), or pass your own corpus with --data")
    docs = []
    for path in sorted(directory.iterdir()):
        if path.suffix or path.name in EXCLUDED_FILES or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for item in text.split("\n%\n"):
            words = item.replace("%", " ").split()
            if len(words) >= min_words:
                docs.append(" ".join(words))
    if not docs:
        raise ConfigError(f"{directory} holds no fortune with at least {min_words} words")
    return docs


def write_generic_corpus(out: Path, n_docs: int, seed: int = 0, min_words: int = 30, directory: Path = FORTUNE_DIR) -> str:
    """Write ``n_docs`` documents (seeded sample without replacement) to ``out`` as ``{"text"}`` JSONL; return its sha256.

    Raises:
        ConfigError: as :func:`fortune_documents`, or fewer documents than ``n_docs``.
    """
    docs = fortune_documents(directory, min_words)
    if n_docs > len(docs):
        raise ConfigError(f"the generic corpus has {len(docs)} documents with >= {min_words} words; asked for {n_docs}")
    picked = random.Random(seed).sample(docs, n_docs)
    data = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in picked).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return hashlib.sha256(data).hexdigest()
