"""Saving and loading a sparse dictionary: ``dictionary.safetensors`` (every parameter and buffer) beside
``dictionary.json`` (format version, kind, config, tensor shapes), written atomically
(:func:`workbench.artifacts.atomic_save_tensors`, :func:`~workbench.artifacts.atomic_write_json`); safetensors only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from probes.dictionaries.base import DictionaryError, SparseDictionary, dictionary_class
from workbench.artifacts import (
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
)
from workbench.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "dictionary.safetensors", "dictionary.json"


class DictionaryFileError(DictionaryError, CheckpointError):
    """A saved dictionary folder is missing a file, is corrupt, or its weights do not match its config."""


def save_dictionary(dictionary: SparseDictionary, directory: str | os.PathLike) -> Path:
    """Write ``dictionary`` to ``directory`` (created if needed); returns the folder. The weights go first, so a folder
    whose JSON exists always has the matching weights."""
    directory = Path(directory)
    state = {k: v.detach().cpu() for k, v in dictionary.state_dict().items()}
    atomic_save_tensors(directory / WEIGHTS, state, metadata={"kind": dictionary.kind})
    atomic_write_json(directory / CONFIG, {"format_version": FORMAT_VERSION, "kind": dictionary.kind,
                                           "config": dictionary.config.to_dict(),
                                           "tensors": {k: list(v.shape) for k, v in state.items()}})
    return directory


def load_dictionary(directory: str | os.PathLike, device: Any = "cpu") -> SparseDictionary:
    """The dictionary saved in ``directory`` by :func:`save_dictionary`, in eval mode on ``device``.

    Raises:
        DictionaryFileError: a missing or corrupt file, an unknown format version or kind, a config the current code
            refuses, or tensors missing, extra or shaped unlike the config (the message names the folder and what is
            wrong).
    """
    directory = Path(directory)
    try:
        meta = read_json(directory / CONFIG)
        tensors = load_tensors(directory / WEIGHTS)
    except CheckpointError as exc:
        raise DictionaryFileError(f"cannot load a dictionary from {directory}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
        raise DictionaryFileError(f"{directory / CONFIG}: format_version {got!r}, expected {FORMAT_VERSION}")
    try:
        cls = dictionary_class(meta.get("kind"))
        dictionary = cls(cls.config_class.from_dict(meta.get("config")))
    except (ConfigError, DictionaryError) as exc:
        raise DictionaryFileError(f"{directory / CONFIG}: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in dictionary.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = {k: (got[k], expected[k]) for k in set(expected) & set(got) if got[k] != expected[k]}
        raise DictionaryFileError(f"{directory / WEIGHTS} does not match its config ({cls.kind}): missing {missing}, "
                                  f"extra {extra}, shape (saved, expected) {wrong}")
    for k, v in dictionary.state_dict().items():
        if v.dtype != tensors[k].dtype:
            raise DictionaryFileError(f"{directory / WEIGHTS}: {k} is {tensors[k].dtype}, expected {v.dtype}")
    dictionary.load_state_dict(tensors)
    return dictionary.to(device).eval()
