"""Your own data: JSONL / JSON / CSV / Parquet files (or a hub dataset id) read through the ``datasets`` library.

::

    from workbench.datafiles import load_rows, encode_rows, to_examples, corpus_texts
    rows = load_rows("train.jsonl")                      # DataRows: validated rows, shape, sha256 of the file
    examples = to_examples(rows, tok, prepend_bos=info.prepend_bos, max_length=512)   # list[Example]
    texts = corpus_texts("unrelated.jsonl")              # every row as one plain text (for dataset-level probes)

Three shapes, detected from the columns: ``prompt``/``completion`` (loss on the completion), ``messages``
(chat template, loss on every assistant turn), ``text`` (loss on every token). See :mod:`.rows` for reading
and validation, :mod:`.examples` for tokenization and the length rule, :mod:`.chat` for chats, :mod:`.split`
for the held-out split and the train/eval overlap, :mod:`.evaluate` for answer loss / perplexity / exact match.
"""

from workbench.datafiles.examples import Encoded, corpus_texts, encode_rows, row_text, to_examples
from workbench.datafiles.rows import EXTENSIONS, SHAPES, DataRows, load_rows, normalise_fields

__all__ = ["DataRows", "Encoded", "EXTENSIONS", "SHAPES", "corpus_texts", "encode_rows", "load_rows", "normalise_fields",
           "row_text", "to_examples"]
