"""The one config reader (workbench.config): types from the annotations, unknown keys, nested configs, files."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.config import (NonNegativeInt, OpenFraction, PositiveFloat, PositiveInt, Probability, check_fields, config_from_dict,
                              load_json_config, read_json_object)
from workbench.errors import ConfigError
from workbench.methods.caft import CaftConfig
from workbench.methods.lofit import LofitConfig
from workbench.tasks.entity_tracking import EntityTrackingConfig
from workbench.train import TrainConfig


@dataclass
class Shapes:
    """Annotations the shipped configs do not all use (Literal, fixed tuples, dict[str, int], optional nested)."""

    mode: Literal["a", "b"] = "a"
    pair: tuple[int, int] = (0, 0)
    counts: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    anything: Any = None
    train: TrainConfig | None = None


def _quickstart():
    from studies.quickstart.study import QuickstartConfig

    return QuickstartConfig


# --- refused, with the field and the expected type named ------------------------------------------
@pytest.mark.parametrize("cls, data, match", [
    (TrainConfig, {"max_steps": "ten"}, r"^TrainConfig\.max_steps must be an int, got 'ten' \(str\)$"),
    (TrainConfig, {"max_steps": 6.0}, r"TrainConfig\.max_steps must be an int, got 6\.0 \(float\)"),
    (TrainConfig, {"max_steps": True}, r"TrainConfig\.max_steps must be an int, got True \(bool\)"),
    (TrainConfig, {"lr": True}, r"TrainConfig\.lr must be a float, got True \(bool\)"),
    (TrainConfig, {"lr": "0.1"}, r"TrainConfig\.lr must be a float, got '0\.1' \(str\)"),
    (TrainConfig, {"lr": float("nan")}, r"TrainConfig\.lr must be a finite number, got nan"),
    (TrainConfig, {"dpo_beta": float("inf")}, r"TrainConfig\.dpo_beta must be a finite number, got inf"),
    (TrainConfig, {"progress": 1}, r"TrainConfig\.progress must be a bool, got 1 \(int\)"),
    (TrainConfig, {"loss": None}, r"TrainConfig\.loss must be a str, got None \(NoneType\)"),
    (TrainConfig, {"learning_rate": 1e-3}, r"unknown TrainConfig key\(s\) \['learning_rate'\].*valid keys: \[.*'lr'"),
    (TrainConfig, [1, 2], r"TrainConfig must be a dict \(JSON object\) of its fields, got list"),
    (TrainConfig, {"max_steps": 0}, r"TrainConfig\.max_steps must be an integer >= 1"),  # a declared range
    (LofitConfig, {"top_k_heads": "10%"}, r"LofitConfig\.top_k_heads must be a float"),
    (LofitConfig, {"heads": [[0, 1], [2, "x"]]}, r"LofitConfig\.heads\[1\]\[1\] must be an int, got 'x'"),
    (LofitConfig, {"heads": "0,1"}, r"LofitConfig\.heads must be a list of list of int, got '0,1'"),
    (LofitConfig, {"select": 5}, r"LofitConfig\.select must be a TrainConfig or a dict \(JSON object\) or null, got 5"),
    (LofitConfig, {"select": {"max_steps": "x"}}, r"LofitConfig\.select\.max_steps must be an int"),
    (LofitConfig, {"offset": {"lr": float("-inf")}}, r"LofitConfig\.offset\.lr must be a finite number"),
    (LofitConfig, {"select": {"steps": 3}}, r"unknown TrainConfig key\(s\) \['steps'\] in LofitConfig\.select"),
    (CaftConfig, {"inner_config": [1]}, r"CaftConfig\.inner_config must be a dict \(JSON object\), got \[1\] \(list\)"),
    (EntityTrackingConfig, {"n_train": 4, "n_heldout": 2, "objects": ["a", 3]}, r"EntityTrackingConfig\.objects must be"),
    (EntityTrackingConfig, {"n_train": 4}, r"EntityTrackingConfig needs key\(s\) \['n_heldout'\]"),
    (Shapes, {"mode": "c"}, r"Shapes\.mode must be one of 'a', 'b', got 'c'"),
    (Shapes, {"pair": [1, 2, 3]}, r"Shapes\.pair must have 2 items"),
    (Shapes, {"pair": [1, "2"]}, r"Shapes\.pair\[1\] must be an int"),
    (Shapes, {"counts": {"x": 1.5}}, r"Shapes\.counts\['x'\] must be an int, got 1\.5"),
    (Shapes, {"names": ["a", None]}, r"Shapes\.names\[1\] must be a str"),
    (Shapes, {"train": {"batch_size_prompts": "8"}}, r"Shapes\.train\.batch_size_prompts must be an int"),
])
def test_refused(cls, data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(cls, data)


def test_nested_study_config_is_read_recursively():
    cls = _quickstart()
    with pytest.raises(ConfigError, match=r"QuickstartConfig\.lofit\.select\.lr must be a float, got 'fast'"):
        config_from_dict(cls, {"lofit": {"select": {"lr": "fast"}}})
    with pytest.raises(ConfigError, match=r"QuickstartConfig\.lofit must be a LofitConfig, got \[1\] \(list\)"):
        config_from_dict(cls, {"lofit": [1]})
    cfg = config_from_dict(cls, {"lofit": {"top_k_heads": 4, "select": {"max_steps": 3}}})
    assert isinstance(cfg.lofit, LofitConfig) and isinstance(cfg.lofit.select, TrainConfig)
    assert cfg.lofit.select.max_steps == 3 and cfg.lofit.top_k_heads == 4


# --- accepted ---------------------------------------------------------------------------------------
def test_accepted_values():
    cfg = config_from_dict(TrainConfig, {"lr": 1, "grad_clip_norm": 0, "progress": False})
    assert cfg.lr == 1 and cfg.grad_clip_norm == 0 and cfg.progress is False  # ints are fine for floats
    lofit = config_from_dict(LofitConfig, {"select": None, "offset": {"max_steps": 2}, "heads": [[0, 1]]})
    assert isinstance(lofit.offset, TrainConfig) and lofit.offset.max_steps == 2 and lofit.heads == [[0, 1]]
    et = config_from_dict(EntityTrackingConfig, {"n_train": 4, "n_heldout": 2, "n_boxes": [3, 4], "objects": ["a", "b", "c", "d"]})
    assert et.n_boxes == (3, 4) and et.objects == ("a", "b", "c", "d") and et.labels is None  # JSON lists become tuples
    shapes = config_from_dict(Shapes, {"mode": "b", "pair": [1, 2], "counts": {"x": 1}, "anything": {"k": [None]}})
    assert shapes == Shapes("b", (1, 2), {"x": 1}, [], {"k": [None]}, None)
    same = TrainConfig(max_steps=5)
    assert config_from_dict(Shapes, {"train": same}).train is same  # an instance passes as it is


# --- files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, match", [
    ("{not json", r"not valid JSON \(Expecting property name"),
    ("[1, 2]", r"must hold a JSON object of its fields, got an array"),
    ('"max_steps"', r"got a string"),
    ('{"max_steps": "ten"}', r"TrainConfig\.max_steps must be an int"),
    ('{"max_stepz": 3}', r"unknown TrainConfig key\(s\) \['max_stepz'\]"),
])
def test_config_files_name_the_file(tmp_path, text, match):
    path = tmp_path / "train.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_json_config(TrainConfig, path)
    assert str(info.value).startswith(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        read_json_object(tmp_path / "missing.json")


def test_study_configs_go_through_the_reader(tmp_path):
    from studies.common import load_config

    cls = _quickstart()
    bad = tmp_path / "bad.json"
    for text, match in [("[]", "got an array"), ("{oops", "not valid JSON"), ('{"n_train": "many"}', r"QuickstartConfig\.n_train must be an int"),
                        ('{"lofit": {"select": {"max_steps": 1.5}}}', r"QuickstartConfig\.lofit\.select\.max_steps must be an int"),
                        ('{"typo": 1}', "unknown keys")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match) as info:
            load_config(cls, bad, tmp_path)
        assert str(bad) in str(info.value)
        with pytest.raises(ConfigError, match=match):
            cls.load(bad)
    from studies.method_comparison.study import StudyConfig

    bad.write_text('{"seeds": [0, "1"]}')
    with pytest.raises(ConfigError, match=r"StudyConfig\.seeds\[1\] must be an int"):
        StudyConfig.load(str(bad))


def test_cli_refuses_a_bad_config_file(tmp_path):
    from typer.testing import CliRunner

    from app.cli import app

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"method_config": [1]}))
    result = CliRunner().invoke(app, ["train", "lofit", "--config", str(job), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "TrainJobConfig.method_config must be a dict" in result.output
    job.write_text("[1]")
    result = CliRunner().invoke(app, ["quickstart", "--config", str(job), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "got an array" in result.output


# --- property: any wrong-typed value for any field is refused, naming the field -------------------
def _fits(value: Any, tp: Any) -> bool:
    """An independent statement of what each annotation of TrainConfig / LofitConfig accepts."""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if tp == list[list[int]]:
        return isinstance(value, list) and all(isinstance(v, list) and all(_fits(x, int) for x in v) for v in value)
    if tp == (TrainConfig | dict | None):
        return value is None or isinstance(value, dict)
    raise AssertionError(f"no rule for {tp}")


ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
                        max_leaves=6)
FIELDS = [(cls, f.name) for cls in (TrainConfig, LofitConfig) for f in dataclasses.fields(cls)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), ANY_JSON)
def test_any_wrong_type_is_refused_naming_the_field(cls_field, value):
    cls, name = cls_field
    tp = typing.get_type_hints(cls)[name]
    if _fits(value, tp):
        return
    with pytest.raises(ConfigError) as info:
        config_from_dict(cls, {name: value})
    assert f"{cls.__name__}.{name}" in str(info.value)


@dataclass
class Settings:
    """A config with one field per declared range."""

    steps: PositiveInt = 1
    window: NonNegativeInt = 0
    lr: PositiveFloat = 1e-3
    share: Probability = 0.5
    held_out: OpenFraction = 0.1
    layer: PositiveInt | None = None

    def __post_init__(self) -> None:
        check_fields(self)



def test_declared_ranges_are_checked_by_the_reader_and_by_post_init():
    """A range declared once in the annotation (``PositiveInt``, ``Probability`` …) is checked when the config is
    read from JSON and when it is built in Python, with one message naming the field."""

    assert config_from_dict(Settings, {"steps": 3, "window": 0, "share": 1.0, "layer": None}).steps == 3
    cases = [({"steps": 0}, "Settings.steps must be an integer >= 1, got 0"), ({"window": -1}, "Settings.window must be an integer >= 0"),
             ({"lr": 0.0}, "Settings.lr must be a number > 0"), ({"share": 1.5}, "Settings.share must be a number >= 0 and <= 1"),
             ({"held_out": 1.0}, "Settings.held_out must be a number > 0 and < 1"), ({"steps": True}, "Settings.steps must be an int"),
             ({"layer": 0}, "Settings.layer must be")]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_from_dict(Settings, bad)
        with pytest.raises(ConfigError, match=re.escape(message)):
            Settings(**bad)


def test_no_config_writes_its_own_integer_range_check():
    """Range checks of config fields are declared (``workbench.config``), not hand-written per file."""
    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for folder in ("workbench", "probes", "studies", "app", "kernels")
                 for p in (root / folder).rglob("*.py") if "isinstance(v, bool) or not isinstance(v, int)" in p.read_text()]
    assert offenders == []
