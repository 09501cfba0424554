"""Run folders: where every command that writes results puts them, checked before any model loads.

One place decides what a run name may be and whether an output folder can be written, so ``workbench train``,
``workbench quickstart`` and every study's ``--out`` refuse the same bad input with the same message:

* :func:`check_run_name` — a run name is one path component: not empty, not ``.`` / ``..``, no ``/`` or ``\\``,
  no NUL or other control character, at most 255 bytes. So ``runs_dir / name`` never leaves ``runs_dir``.
* :func:`check_output_dir` — a folder we are about to write into: it is a folder, or it can be created (its
  nearest existing ancestor is a writable folder, and nothing on the way is a regular file); it is writable.
  Checks only: it creates nothing.
* :func:`plan_run` — both checks for ``runs_dir / name`` (or a default name), returning the folder's path.
* :func:`run_folder` — a context manager around the job's writing part; it creates the folder (and missing
  parents) when entered, which callers do only once the job has started (configs valid, model loaded).

Failure rule (``run_folder``): when the body raises, a folder that *this job created* and that holds no file
(only empty sub-folders) is removed, with any parent folders it created that are still empty; a folder that
holds any file (checkpoints of a resumable run, a saved adapter, or a folder that existed before) is kept,
and ``failed.json`` in it records the error (type, message, time) so the rerun with the same name resumes.
A later successful run removes a stale ``failed.json``. The original exception always propagates.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import ConfigError

__all__ = ["FAILED_FILE", "check_output_dir", "check_run_name", "output_dir_problem", "plan_run", "run_folder"]

FAILED_FILE = "failed.json"
_MAX_NAME_BYTES = 255  # NAME_MAX on Linux / macOS


def log_progress(message: str) -> None:
    """Progress and log lines of every job and study: on stderr (flushed), so that a command's result, on stdout,
    can be read by scripts and tests whatever progress output (ours or a library's) runs beside it."""
    print(message, file=sys.stderr, flush=True)


def check_run_name(name: str, option: str = "--name") -> str:
    """Return ``name`` if it is a single path component, else raise.

    Raises:
        ConfigError: empty, ``.``, ``..``, a path separator (so also an absolute path), a NUL or control
            character, or longer than 255 bytes; the message names ``option``.
    """
    if not isinstance(name, str):
        raise ConfigError(f"{option} must be a run folder name (text), got {type(name).__name__} {name!r}")
    why = None
    if name.strip() == "":
        why = "is empty or blank"
    elif name in (".", ".."):
        why = "is not a folder name"
    elif name.startswith(("/", "\\")) or os.path.isabs(name):
        why = "is an absolute path"
    elif ".." in name.replace("\\", "/").split("/"):
        why = "contains '..' (it would leave the runs folder)"
    elif "/" in name or "\\" in name:
        why = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "contains a NUL or control character"
    elif len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        why = f"is longer than {_MAX_NAME_BYTES} bytes"
    if why:
        raise ConfigError(f"{option} {name!r} {why}; a run name is one folder name such as 'my-run', created inside "
                          "the runs folder (choose that folder with --runs-dir)")
    return name


def output_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an output folder (``None`` when it can). Creates nothing.

    Returns ``None`` when ``path`` is a writable folder, or does not exist and its nearest existing ancestor
    is a writable folder; else a short reason (is a regular file, lies under a regular file, not writable).
    """
    p = Path(path).expanduser()
    if "\x00" in str(p):
        return "contains a NUL character"
    try:
        if p.exists() and not p.is_dir():
            return "is a regular file, not a folder" if p.is_file() else "exists and is not a folder"
        probe = p
        while not probe.exists():
            if probe.is_symlink():  # a dangling link: mkdir would fail
                return f"is under {str(probe)!r}, a broken symbolic link"
            parent = probe.parent
            if parent == probe:
                break
            probe = parent
        if probe != p and not probe.is_dir():
            return f"cannot be created: {str(probe)!r} is a regular file, not a folder"
        if not os.access(probe, os.W_OK | os.X_OK):
            return "is not writable" if probe == p else f"cannot be created: {str(probe)!r} is not writable"
    except OSError as exc:  # e.g. a name too long, a permission error while looking
        return f"cannot be used ({exc.strerror or exc})"
    return None


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Return ``path`` as a Path if it can be used as an output folder (see :func:`output_dir_problem`).

    Raises:
        ConfigError: the message names ``option``, the path and what to do.
    """
    problem = output_dir_problem(path)
    if problem:
        raise ConfigError(f"{option} {str(path)!r} {problem}; pass a folder you can write to")
    return Path(path).expanduser()


def plan_run(runs_dir: str | os.PathLike, name: str | None, default_name: str, *,
             runs_option: str = "--runs-dir", name_option: str = "--name") -> Path:
    """Check ``runs_dir`` and the run name (``name``, else ``default_name``) and return ``runs_dir / name``.

    Nothing is created. An existing run folder is fine (the job resumes it).

    Raises:
        ConfigError: a bad name, an unusable ``runs_dir``, or a run folder path that is not a folder.
    """
    run_name = check_run_name(default_name if name is None else name, name_option)
    root = check_output_dir(runs_dir, runs_option)
    run_dir = root / run_name
    problem = output_dir_problem(run_dir)
    if problem:
        raise ConfigError(f"run folder {str(run_dir)!r} ({name_option} {run_name!r}) {problem}; choose another {name_option}")
    return run_dir


def _missing_chain(path: Path) -> list[Path]:
    """``path`` and its missing ancestors, deepest first (what ``mkdir(parents=True)`` would create)."""
    out = []
    while not path.exists() and path.parent != path:
        out.append(path)
        path = path.parent
    return out


def _holds_files(path: Path) -> bool:
    for _, _, files in os.walk(path):
        if files:
            return True
    return any(p.is_symlink() for p in path.rglob("*"))


def _remove_empty(path: Path) -> None:
    """Remove ``path`` if it holds only empty folders (``os.rmdir`` bottom-up: never deletes a file)."""
    with contextlib.suppress(OSError):
        for dirpath, _, _ in sorted(os.walk(path), key=lambda t: -len(t[0])):
            os.rmdir(dirpath)


@contextlib.contextmanager
def run_folder(path: str | os.PathLike, *, create: bool = True, option: str = "--runs-dir") -> Iterator[Path]:
    """Create ``path`` (with ``create``) and apply the failure rule of this module's docstring on error.

    Args:
        path: the run / output folder, already checked by :func:`plan_run` or :func:`check_output_dir`.
        create: create the folder on entry (``False``: the body creates it, e.g. a study's ``run``).
        option: named in the error when the folder cannot be created.
    Raises:
        ConfigError: the folder cannot be created; anything the body raises, unchanged.
    """
    path = Path(path)
    created = _missing_chain(path)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run folder {str(path)!r} ({exc.strerror or exc}); "
                              f"pass a writable folder as {option}") from exc
    try:
        yield path
    except BaseException as exc:
        try:
            _after_failure(path, created, exc)
        except Exception as cleanup_exc:  # never hide the job's own error behind a cleanup error
            exc.add_note(f"(cleaning up the run folder {path} failed too: {cleanup_exc})")
        raise
    else:
        with contextlib.suppress(OSError):
            (path / FAILED_FILE).unlink(missing_ok=True)


def _after_failure(path: Path, created: list[Path], exc: BaseException) -> None:
    if not path.is_dir():
        return
    if path in created and not _holds_files(path):
        _remove_empty(path)
        for parent in created[1:]:  # parents this job created, if nothing else went in
            with contextlib.suppress(OSError):
                os.rmdir(parent)
        return
    from workbench.artifacts import atomic_write_json

    record = {"error": type(exc).__name__, "message": str(exc),
              "time": _dt.datetime.now(tz=_dt.timezone.utc).isoformat(), "unix_time": time.time(),
              "note": "the job failed; files here are kept (rerun with the same run name to resume)"}
    atomic_write_json(path / FAILED_FILE, record)
