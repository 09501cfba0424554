"""Reading your data: :func:`load_rows` turns a JSONL / JSON / CSV / Parquet file (or a hub dataset id) into
:class:`DataRows`, validated row by row before any model loads.

Every file goes through the Hugging Face ``datasets`` library (``load_dataset("json" | "csv" | "parquet",
data_files=...)``). Text formats are also scanned with the standard library first, so a bad file gets one
:class:`~workbench.errors.ConfigError` naming the file, the row (1-based) and its line, and the field -- not a
pyarrow stack trace. Three shapes (see :data:`SHAPES`), detected from the columns or forced:

* ``"prompt_completion"`` -- ``{"prompt": str, "completion": str}``;
* ``"messages"`` -- ``{"messages": [{"role": str, "content": str}, ...]}`` with at least one assistant turn
  (in CSV the cell may hold the list as JSON text);
* ``"text"`` -- ``{"text": str}``.

Detection order when several fit: messages, then prompt/completion, then text. A column mapping
(``fields={"prompt_field": "question", "completion_field": "answer"}``; the keys without ``_field`` work
too) reads other column names; rows are stored under the canonical names above.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

__all__ = ["DataRows", "EXTENSIONS", "SHAPES", "load_rows", "normalise_fields"]

#: shape name -> the canonical fields its rows carry.
SHAPES: dict[str, tuple[str, ...]] = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}
#: file extension -> the ``datasets`` builder that reads it.
EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_CANONICAL = ("prompt", "completion", "messages", "text")


@dataclass(frozen=True)
class DataRows:
    """Validated rows of one data source.

    Attributes:
        source: the file path (as given) or hub dataset id.
        shape: one of :data:`SHAPES`.
        rows: one dict per row with the shape's canonical fields (str, or a list of ``{"role", "content"}``
            dicts for ``messages``).
        row_numbers: each row's 1-based row number in the source (data rows, header excluded).
        line_numbers: each row's 1-based line in the file (JSONL and CSV; ``None`` where unknown).
        sha256: hex sha256 of the file's bytes (hub datasets: ``"hub:<fingerprint>"``).
        columns: canonical field -> the source's column name.
        split: the split read (hub datasets; ``"train"`` for files).
    """

    source: str
    shape: str
    rows: list[dict[str, Any]]
    row_numbers: list[int]
    line_numbers: list[int | None]
    sha256: str
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        """``"<source>: row R (line L)"`` for the ``i``-th row (0-based index into ``rows``)."""
        line = self.line_numbers[i]
        return f"{self.source}: row {self.row_numbers[i]}" + (f" (line {line})" if line is not None else "")

    def subset(self, indices: list[int]) -> "DataRows":
        """The rows at ``indices`` (0-based), keeping their original row and line numbers."""
        return replace(self, rows=[self.rows[i] for i in indices], row_numbers=[self.row_numbers[i] for i in indices],
                       line_numbers=[self.line_numbers[i] for i in indices])

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for ``results.json``: source, sha256, shape, n_rows, columns, split."""
        return {"source": self.source, "sha256": self.sha256, "shape": self.shape, "n_rows": len(self.rows),
                "columns": dict(self.columns), "split": self.split}


def normalise_fields(fields: dict[str, str] | None) -> dict[str, str]:
    """A column mapping as ``{canonical: column}``; accepts ``prompt_field`` or ``prompt`` style keys.

    Raises:
        ConfigError: an unknown key or a value that is not a non-empty string.
    """
    out: dict[str, str] = {}
    for key, col in (fields or {}).items():
        name = str(key).removesuffix("_field")
        if name not in _CANONICAL:
            raise ConfigError(f"unknown column-mapping key {key!r}; valid: {[c + '_field' for c in _CANONICAL]}")
        if col is None:
            continue
        if not isinstance(col, str) or not col:
            raise ConfigError(f"column mapping {key!r} must name a column (a non-empty string), got {col!r}")
        out[name] = col
    return out


def _is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and Path(source).suffix.lower() not in EXTENSIONS


def _read_bytes(path: Path, source: str) -> bytes:
    if not path.exists():
        raise ConfigError(f"{source}: data file not found (give a .jsonl, .json, .csv or .parquet file, or a hub dataset id "
                          "like 'owner/name' when the hub is reachable)")
    if path.is_dir():
        raise ConfigError(f"{source}: is a folder; name one data file (.jsonl, .json, .csv or .parquet)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the data file ({exc.strerror or exc})") from exc


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}: invalid UTF-8 at line {line} (byte offset {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                          "save the file as UTF-8") from exc


def _scan_text(text: str, suffix: str, source: str) -> tuple[list[dict[str, Any]], list[int | None]]:
    """The rows as Python parses them, with each row's 1-based line (``None`` for a JSON array)."""
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows, lines = [], []
        try:
            prev = reader.line_num if reader.fieldnames is not None else 0  # reading fieldnames reads the header
            for row in reader:
                if None in row:
                    raise ConfigError(f"{source}: row {len(rows) + 1} (line {prev + 1}) has more cells than the header's "
                                      f"{len(reader.fieldnames or [])} columns")
                rows.append(row)
                lines.append(prev + 1)  # a row's first line (a quoted cell may span several)
                prev = reader.line_num
        except csv.Error as exc:
            raise ConfigError(f"{source}: not valid CSV at line {reader.line_num} ({exc})") from exc
        if not reader.fieldnames:
            raise ConfigError(f"{source}: the file is empty (no header row, no data rows)")
        return rows, lines
    if suffix == ".json" and text.lstrip()[:1] in ("[", "{") and not _looks_like_jsonl(text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise ConfigError(f"{source}: a .json data file must hold an array of row objects (or JSON Lines), got {type(data).__name__}")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise ConfigError(f"{source}: row {i + 1} is a {type(row).__name__}, not an object with named fields")
        return data, [None] * len(data)
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: row {len(rows) + 1} (line {n}) is not valid JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise ConfigError(f"{source}: row {len(rows) + 1} (line {n}) is a {type(row).__name__}, not an object with named fields")
        rows.append(row)
        lines.append(n)
    return rows, lines


def _looks_like_jsonl(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(ln), dict) for ln in lines[:2])
    except json.JSONDecodeError:
        return False


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """``datasets`` with its progress bars off for the block (restored after)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was:
            datasets.enable_progress_bars()


def _json_field(text: str) -> str | None:
    """The key of a ``{"key": [rows]}`` JSON document (``datasets`` reads the rows with ``field=key``)."""
    if text.lstrip()[:1] != "{" or _looks_like_jsonl(text):
        return None
    data = json.loads(text)
    return next(iter(data)) if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list) else None


def _load_with_datasets(path: Path, suffix: str, source: str, csv_columns: list[str] | None, json_field: str | None = None,
                        fresh: bool = False) -> list[dict[str, Any]]:
    """The rows as ``datasets`` reads them (CSV cells kept as text); ``fresh``: rebuild its cache of the file."""
    with _quiet_datasets() as datasets:
        kw: dict[str, Any] = {"field": json_field} if json_field else {}
        if fresh:
            kw["download_mode"] = "force_redownload"
        if suffix == ".csv":
            kw = {"features": datasets.Features({c: datasets.Value("string") for c in csv_columns or []}), "keep_default_na": False}
        try:
            ds = datasets.load_dataset(EXTENSIONS[suffix], data_files=str(path), split="train", **kw)
        except Exception as exc:  # noqa: BLE001 - pyarrow / datasets raise many types for one bad file
            raise ConfigError(f"{source}: the datasets library cannot read this {suffix} file ({type(exc).__name__}: {exc})") from exc
    return ds.to_list()


def _load_hub(source: str, split: str) -> tuple[list[dict[str, Any]], str]:
    from workbench.models.load import hub_reachable

    if not hub_reachable():
        raise ConfigError(f"{source}: not a local file, and as a Hugging Face dataset id it needs the hub, which is not reachable "
                          "(offline, or HF_HUB_OFFLINE=1); download the data and pass the file (.jsonl, .json, .csv, .parquet)")
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{source}: cannot load this hub dataset (split {split!r}): {type(exc).__name__}: {exc}") from exc
    return ds.to_list(), f"hub:{ds._fingerprint}"


def _detect(columns: set[str], mapping: dict[str, str], shape: str | None, source: str) -> tuple[str, dict[str, str]]:
    col = {c: mapping.get(c, c) for c in _CANONICAL}
    if shape is not None:
        if shape not in SHAPES:
            raise ConfigError(f"unknown data shape {shape!r}; valid: {sorted(SHAPES)}")
        return shape, {c: col[c] for c in SHAPES[shape]}
    for name in ("messages", "prompt_completion", "text"):
        if all(col[c] in columns for c in SHAPES[name]):
            return name, {c: col[c] for c in SHAPES[name]}
    raise ConfigError(f"{source}: cannot tell the data shape from the columns {sorted(columns)}: expected 'prompt' + 'completion', "
                      "'messages' or 'text'", hint="map other column names with", settings=tuple(f"{c}_field" for c in _CANONICAL),
                      python="fields={'prompt_field': ..., 'text_field': ...}")


#: the roles a chat row may use: those of the OpenAI / Hugging Face chat format that chat templates render.
CHAT_ROLES = ("system", "user", "assistant", "tool")


def _check_messages(value: Any, where: str, col: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # CSV: the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}, field {col!r}: not a list of messages (text that is not JSON: {exc.msg})") from exc
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}, field {col!r}: must be a non-empty list of {{'role', 'content'}} messages, got {_kind(value)}")
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise ConfigError(f"{where}, field {col}[{j}]: must be a {{'role', 'content'}} object, got {_kind(msg)}")
        for key in ("role", "content"):
            if not isinstance(msg.get(key), str):
                what = "missing" if msg.get(key) is None else f"{_kind(msg[key])}, not text"
                raise ConfigError(f"{where}, field {col}[{j}].{key}: {what}")
        if msg["role"] not in CHAT_ROLES:
            raise ConfigError(f"{where}, field {col}[{j}].role: {msg['role']!r} is not a chat role; use one of {list(CHAT_ROLES)}")
        out.append({"role": msg["role"], "content": msg["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ConfigError(f"{where}, field {col!r}: the chat has no assistant turn (roles {[m['role'] for m in out]}); "
                          "the loss is taken on assistant turns, so each chat needs at least one")
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    name = {"int": "an int", "float": "a float", "bool": "a boolean", "list": "a list", "dict": "an object"}.get(
        type(value).__name__, f"a {type(value).__name__}")
    return f"{name} ({value!r:.40})"


def _check_row(row: dict[str, Any], shape: str, columns: dict[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, col in columns.items():
        value = row.get(col)
        if value is None:
            raise ConfigError(f"{where}: missing field {col!r} (the {shape} shape needs {sorted(columns.values())})")
        if name == "messages":
            out[name] = _check_messages(value, where, col)
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{where}, field {col!r}: expected text (a string), got {_kind(value)}")
        if not value.strip() and name != "prompt":
            raise ConfigError(f"{where}, field {col!r}: is empty")
        out[name] = value
    return out


def load_rows(source: str, *, fields: dict[str, str] | None = None, split: str = "train", limit: int | None = None,
              shape: str | None = None) -> DataRows:
    """Read and validate the rows of ``source``: a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a
    hub dataset id (``owner/name``) when the hub is reachable.

    Args:
        fields: column mapping, ``{"prompt_field": "question", ...}`` (see the module docstring).
        split: the split of a hub dataset (files have one split, ``"train"``).
        limit: keep (and validate) only the first ``limit`` rows; ``None`` = all.
        shape: force ``"prompt_completion"`` / ``"messages"`` / ``"text"`` instead of detecting it.

    Returns:
        :class:`DataRows` with the rows under canonical field names, their row/line numbers, and the sha256
        of the file's bytes.

    Raises:
        ConfigError: naming the file (and row, line and field where there is one): missing file, a folder, an
            unknown extension, invalid UTF-8, an empty file, invalid JSON / CSV, columns that fit no shape,
            a missing or null field, a field of the wrong type (e.g. a number for ``completion``), an empty
            completion or text, a chat without an assistant turn; an offline hub id; a bad ``limit``.
    """
    if not isinstance(source, (str, Path)) or not str(source):
        raise ConfigError(f"data source must be a file path or hub dataset id, got {source!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive int or None, got {limit!r}")
    source = str(source)
    mapping = normalise_fields(fields)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if not path.exists() and _is_hub_id(source):
        raw, digest = _load_hub(source, split)
        lines: list[int | None] = [None] * len(raw)
    else:
        if suffix not in EXTENSIONS and not path.is_dir():
            raise ConfigError(f"{source}: unknown data file extension {path.suffix!r}; use .jsonl, .json, .csv or .parquet")
        data = _read_bytes(path, source)
        digest = hashlib.sha256(data).hexdigest()
        if not data.strip():
            raise ConfigError(f"{source}: the file is empty (no rows)")
        csv_columns, json_field, expected = None, None, None
        if suffix != ".parquet":
            scanned, lines = _scan_text(_decode(data, source), suffix, source)
            if suffix == ".csv":
                csv_columns = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")).fieldnames or [])
            elif suffix == ".json":
                json_field = _json_field(data.decode("utf-8"))
            if not scanned:
                raise ConfigError(f"{source}: the file holds no rows")
            columns = set().union(*(r.keys() for r in scanned))
            kind, cols = _detect(columns, mapping, shape, source)
            # precise messages on Python's view of the file first
            expected = [_check_row(row, kind, cols, _where(source, i, lines)) for i, row in enumerate(scanned[:limit])]
        raw = _load_with_datasets(path, suffix, source, csv_columns, json_field)
        if expected is not None and _canonical(raw[:limit], mapping, shape, source, lines) != expected:
            # datasets keys its cache on path and modification time: a file rewritten within that resolution reads stale
            raw = _load_with_datasets(path, suffix, source, csv_columns, json_field, fresh=True)
            if _canonical(raw[:limit], mapping, shape, source, lines) != expected:
                raise ConfigError(f"{source}: the datasets library reads other rows than the file holds; check the file's format")
        if suffix == ".parquet":
            lines = [None] * len(raw)
        if len(raw) != len(lines):
            lines = [None] * len(raw)
    if not raw:
        raise ConfigError(f"{source}: the file holds no rows")
    raw = raw[:limit]
    kind, cols = _detect(set().union(*(r.keys() for r in raw)), mapping, shape, source)
    rows = [_check_row(r, kind, cols, _where(source, i, lines)) for i, r in enumerate(raw)]
    return DataRows(source, kind, rows, list(range(1, len(rows) + 1)), list(lines[: len(rows)]), digest, cols,
                    split if _is_hub_id(source) and not path.exists() else "train")


def _canonical(raw: list[dict[str, Any]], mapping: dict[str, str], shape: str | None, source: str,
               lines: list[int | None]) -> list[dict[str, Any]] | None:
    """``raw`` as checked canonical rows, or ``None`` when they do not pass (compared, never raised)."""
    try:
        kind, cols = _detect(set().union(*(r.keys() for r in raw)) if raw else set(), mapping, shape, source)
        return [_check_row(r, kind, cols, _where(source, i, lines)) for i, r in enumerate(raw)]
    except ConfigError:
        return None


def _where(source: str, i: int, lines: list[int | None]) -> str:
    line = lines[i] if i < len(lines) else None
    return f"{source}: row {i + 1}" + (f" (line {line})" if line is not None else "")
