"""What every study shares: loading its JSON configs, writing its results and figures, and its command line.

Each study folder holds ``configs/{tiny,default,full}.json``, a config dataclass, ``run(cfg, out_dir)``
and ``figures(record)`` (in ``figures.py``); these helpers keep those three conventions in one place. The
figures are written as plotly JSON (what the app renders) and HTML.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from workbench.config import load_json_config
from workbench.errors import ConfigError, WorkbenchError

C = TypeVar("C")
SHIPPED = ("tiny", "default", "full")


def load_config(cls: type[C], name_or_path: str | Path, config_dir: Path) -> C:
    """``"tiny"`` / ``"default"`` / ``"full"`` (from ``config_dir``) or a path to a JSON file, as ``cls``, read
    by :func:`workbench.config.load_json_config` (types, unknown keys, then ``cls.__post_init__``).

    Raises:
        ConfigError: unknown name, missing file, a file that is not a JSON object, keys that are not fields
            of ``cls`` or values of the wrong type (file-level messages start with the file's path).
    """
    path = config_dir / f"{name_or_path}.json" if str(name_or_path) in SHIPPED else Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"no study config {name_or_path!r}; use tiny, default, full or a path to a JSON file")
    return load_json_config(cls, path)


def save_results(out_dir: str | Path, config: dict[str, Any], metrics: dict[str, Any], models: dict[str, Any], device: str,
                 started: float, figures: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Write ``out_dir/results.json`` (a :func:`workbench.artifacts.results_record`: config, metrics, versions, git
    commit, model hashes) and ``out_dir/figures/{name}.json`` + ``.html`` from ``figures(record)``, atomically;
    returns the record."""
    import time

    from workbench.artifacts import atomic_write_json, results_record

    out_dir = Path(out_dir)
    record = results_record(config, metrics, models, device, started, time.time())
    atomic_write_json(out_dir / "results.json", record)
    write_figure_files(figures(record), out_dir / "figures")
    return record


def write_figure_files(figs: dict[str, Any], fig_dir: str | Path, html: bool = True) -> list[Path]:
    """Write each plotly Figure as ``{name}.json`` (plotly JSON: what the app renders, without importing the
    study) and, with ``html``, as ``{name}.html`` next to one shared ``plotly.min.js`` (opens offline), each
    file atomically; returns the JSON paths."""
    from workbench.artifacts import atomic_write_bytes

    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if html:
        from plotly.offline import get_plotlyjs

        atomic_write_bytes(fig_dir / "plotly.min.js", get_plotlyjs().encode())
    paths = []
    for name, fig in figs.items():
        paths.append(atomic_write_bytes(fig_dir / f"{name}.json", fig.to_json().encode()))
        if html:
            atomic_write_bytes(fig_dir / f"{name}.html", fig.to_html(include_plotlyjs="directory", full_html=True).encode())
    return paths


def study_main(name: str, doc: str | None, load: Callable[[str], Any], run: Callable[[Any, str], dict[str, Any]],
               report: Callable[[dict[str, Any]], None], argv: list[str] | None = None, out_help: str = "results.json, figures/") -> int:
    """``python -m studies.<name> --config tiny|default|full|PATH --out runs/<name>``: run, then ``report``
    the record; a :class:`WorkbenchError` is printed as one line and exits 2.

    ``--out`` may be any folder; it is checked before the config loads (not a regular file, creatable,
    writable: :func:`workbench.runs.check_output_dir`). If the study fails, an ``--out`` folder it created and
    left without files is removed; one holding files is kept with ``failed.json`` (:mod:`workbench.runs`)."""
    from workbench.runs import check_output_dir, run_folder

    parser = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=doc)
    parser.add_argument("--config", default="default", help="tiny, default, full, or a path to a JSON config")
    parser.add_argument("--out", default=f"runs/{name}", help=f"output folder ({out_help})")
    args = parser.parse_args(argv)
    try:
        out = check_output_dir(args.out, "--out")
        cfg = load(args.config)
        with run_folder(out, create=False):
            record = run(cfg, args.out)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(record)
    return 0


class ShippedConfig:
    """Mixin for a study's config dataclass: ``to_dict``, ``load(name_or_path)`` and ``tiny()``, reading the
    shipped JSON configs from the ``configs/`` folder beside the module that defines the class."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, name_or_path: str | Path):
        """``"tiny"`` / ``"default"`` / ``"full"`` (from ``configs/``) or a path to a JSON file.

        Raises:
            ConfigError: unknown name, missing file or unknown keys.
        """
        return load_config(cls, name_or_path, Path(sys.modules[cls.__module__].__file__).parent / "configs")

    @classmethod
    def tiny(cls):
        return cls.load("tiny")
