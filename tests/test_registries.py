"""Names live at home (DESIGN.md, "Registries"): a method's name or an app view's name is written as a string only in
its own folder or module, so adding a method or a view touches nothing else.

* A method's home: ``workbench/methods/<name>/`` and the app module that registers its *Method* view
  (:data:`app.views.METHOD_VIEWS`). A view's home: the module that registers it (:data:`app.views.VIEWS`). Both are
  read from the registries, not listed here.
* The walk covers every ``.py`` of app/, workbench/, probes/, studies/ and kernels/ (tests are not walked). Allowed
  outside a name's home: docstrings (comments are not in the AST); a default (a parameter's, or a dataclass field's
  in a class body): a default choice is data; in studies/, a name anywhere but in a comparison (a study names the
  method it trains, and its records' keys, as data; it never branches on a name: ``==``, ``!=``, ``in``, ``match``);
  and the word ``"full"`` where it is not the method (:data:`NOT_A_NAME`, with why).
* The checker is tested on a synthetic tree, so a walk that finds nothing cannot pass silently.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WALKED = ("app", "workbench", "probes", "studies", "kernels")
#: (file, name) -> why the string there is a word, not the registered name.
NOT_A_NAME = {
    ("probes/contribution.py", "full"): "record='full' keeps every component's contribution (vs 'sums')",
    ("probes/layer_search.py", "full"): "the full layer range as a search baseline",
    ("workbench/methods/caft/directions.py", "full"): "scikit-learn's PCA(svd_solver='full')",
}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _defaults(tree: ast.AST) -> set[int]:
    """Constants that are a parameter's default or a class-body annotated assignment's value (a dataclass field)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arguments):
            out |= {id(d) for d in [*node.defaults, *node.kw_defaults] if isinstance(d, ast.Constant)}
        elif isinstance(node, ast.ClassDef):
            out |= {id(s.value) for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.value, ast.Constant)}
    return out


def _compared(tree: ast.AST) -> set[int]:
    """Constants that a comparison or a ``match`` case tests against (directly, or inside a tuple / list / set)."""
    out = set()
    for node in ast.walk(tree):
        operands = [node.left, *node.comparators] if isinstance(node, ast.Compare) else [node.value] if isinstance(node, ast.MatchValue) else []
        for op in operands:
            out |= {id(e) for e in ([op] + list(getattr(op, "elts", []))) if isinstance(e, ast.Constant)}
    return out


def _home(rel: str, homes: list[str]) -> bool:
    return any(rel == h or (h.endswith("/") and rel.startswith(h)) for h in homes)


def names_out_of_home(root: Path, homes: dict[str, list[str]], not_a_name: dict | None = None) -> list[str]:
    """``"path:line 'name'"`` for every string literal equal to a name of ``homes`` (name -> files, or folders ending
    in ``/``, relative to ``root``) outside its homes, under the rules of the module docstring."""
    not_a_name = NOT_A_NAME if not_a_name is None else not_a_name
    found = []
    for top in WALKED:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            allowed, compared = _docstrings(tree) | _defaults(tree), _compared(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in homes) or id(node) in allowed:
                    continue
                name = node.value
                if _home(rel, homes[name]) or (rel, name) in not_a_name or (top == "studies" and id(node) not in compared):
                    continue
                found.append(f"{rel}:{node.lineno} {name!r}")
    return found


def _path_of(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).resolve().relative_to(ROOT).as_posix()


def registered_homes() -> dict[str, list[str]]:
    """Every registered method and app view name -> its homes, from the registries."""
    from app.views import METHOD_VIEWS, VIEWS
    from workbench.methods import available_methods

    homes = {name: [f"workbench/methods/{name}/"] for name in available_methods()}
    for spec in METHOD_VIEWS.specs():
        homes.setdefault(spec.method, []).append(_path_of(spec.module))
    for view in VIEWS.specs():
        assert view.name not in homes, f"the view {view.name!r} has a method's name"
        homes[view.name] = [_path_of(view.module)]
    return homes


def test_no_method_or_view_name_outside_its_home():
    homes = registered_homes()
    assert len(homes) >= 5 + 8  # the registries were read (every method, every view)
    assert names_out_of_home(ROOT, homes) == []


@pytest.mark.parametrize(("where", "code", "flagged"), [
    ("app/main.py", "if view == 'Method':\n    pass\n", True),
    ("app/views/other.py", "VIEWS = {'lofit': 1}\n", True),
    ("workbench/train_job.py", "def f(m):\n    return get_method('lora')\n", True),
    ("probes/x.py", "x = 'caft'\n", True),
    ("studies/s/study.py", "if cfg.inner == 'lofit':\n    pass\n", True),
    ("studies/s/study.py", "ok = m in ('lora', 'neft')\n", True),
    ("studies/s/study.py", "match m:\n    case 'lora':\n        pass\n", True),
    ("studies/s/study.py", "r = finetune('lofit', model)\nt = {'lora': 1.0}\n", False),
    ("workbench/methods/lofit/trainer.py", "if m == 'lofit':\n    pass\n", False),
    ("app/views/lofit.py", "METHOD = 'lofit'\n", False),
    ("app/views/method.py", "register_view(PageView('Method', 60))\n", False),
    ("workbench/x.py", "def f():\n    '''Train \"lofit\" here.'''\n", False),
    ("workbench/x.py", "'lofit'\n", False),  # the module docstring
    ("workbench/x.py", "def f(method='lofit'):\n    pass\nclass C:\n    method: str = 'lofit'\n", False),
    ("workbench/x.py", "class C:\n    method = 'lofit'\n", True),  # not an annotated field: a class constant
    ("probes/contribution.py", "if record == 'full':\n    pass\n", False),
])
def test_the_checker_finds_names_out_of_home(tmp_path, where, code, flagged):
    for top in WALKED:
        (tmp_path / top).mkdir()
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    homes = {"lofit": ["workbench/methods/lofit/", "app/views/lofit.py"], "lora": ["workbench/methods/lora/"],
             "neft": ["workbench/methods/neft/"], "caft": ["workbench/methods/caft/"], "full": ["workbench/methods/full/"],
             "Method": ["app/views/method.py"]}
    found = names_out_of_home(tmp_path, homes)
    assert bool(found) == flagged, found
    assert all(f.startswith(where) for f in found)


# --- the app's view registry -----------------------------------------------------------------------------------------
def test_views_register_themselves_in_order_with_what_they_need():
    from app.views import NEEDS, VIEWS, page_views

    views = page_views()
    assert [v.order for v in views] == sorted(v.order for v in views) and len({v.name for v in views}) == len(views)
    assert all(v.needs <= NEEDS and v.module.startswith("app.views.") for v in views)
    assert set(VIEWS.names()) == {v.name for v in views}
    # an analysis view needs a prompt; one without a pair or prompt still draws
    assert not views[0].ready(None, None) and views[0].ready(object(), object())
    assert any(v.ready(None, None) for v in views)


def test_a_second_view_of_the_same_name_raises(monkeypatch):
    from app.views import VIEWS, PageView, page_views, register_view
    from workbench.errors import ConfigError

    monkeypatch.setattr(VIEWS, "_specs", dict(VIEWS._specs))
    first = page_views()[0]
    register_view(PageView(first.name, first.order, first.needs, first.render, first.exports))  # its module again: fine
    with pytest.raises(ConfigError, match=f"view {first.name!r} is already registered"):
        register_view(PageView(first.name, 1, set(), lambda ctx: 0))  # defined here: another module
    with pytest.raises(ConfigError, match="needs \\['corpus'\\], which the page does not provide"):
        PageView("Corpus", 1, {"corpus"}, lambda ctx: 0)


def test_a_new_view_module_is_picked_up_by_the_registry(monkeypatch, tmp_path):
    """Adding a view is adding one module: the registry imports every module of the package it reads."""
    from workbench.registry import Registry

    pkg = tmp_path / "someviews"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from workbench.registry import Registry\nREG = Registry('view', __name__, modules=True)\n")
    (pkg / "extra.py").write_text("from someviews import REG\nREG.register('Extra', 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import someviews

    assert someviews.REG.names() == ["Extra"] and someviews.REG.find("nope") is None
    assert Registry("view", "someviews").names() == []  # without modules=True only sub-packages register


def test_method_views_come_from_the_registry(tiny):
    from app.views import METHOD_VIEWS
    from app.views.method import generic_view, view_of

    model, _ = tiny
    for spec in METHOD_VIEWS.specs():
        assert spec.module.startswith("app.views.") and callable(spec.build)

    class Other(torch.nn.Module):
        method = "no-such-method"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

    assert view_of(Other(), model).title == generic_view(Other()).title == "no-such-method intervention"


# --- method extras: declared on the spec, called by the generic job ---------------------------------------------------
def test_the_train_job_saves_what_the_spec_declares(monkeypatch, tmp_path, tiny):
    """``TrainJob.save`` calls the spec's ``save_extras`` (any method's) and nothing else beyond the adapter."""
    from dataclasses import dataclass

    from workbench import train_job
    from workbench.finetune import FinetuneResult
    from workbench.methods import METHODS, get_method, register_method
    from workbench.train import TrainResult

    model, info = tiny
    spec = get_method("lofit")
    intervention = spec.intervention_cls(spec.config_cls(heads=[[0, 1]], top_k_heads=1), info.to_dict())
    calls = []

    @dataclass
    class ProbeConfig:
        pass

    class ProbeIntervention(spec.intervention_cls):
        pass

    monkeypatch.setattr(METHODS, "_specs", dict(METHODS._specs))
    register_method("extras-probe", ProbeConfig, ProbeIntervention, save_extras=lambda *a: calls.append(a))
    result = FinetuneResult("extras-probe", intervention, TrainResult(losses=[1.0]))
    for method in ("extras-probe", "lofit"):
        cfg = train_job.TrainJobConfig(method=method)
        run = tmp_path / method
        train_job.TrainJob(cfg, run, model, None, info, data=None, started=0.0, log=lambda *_: None, result=result).save()
        assert (run / "adapter" / "adapter.json").is_file() and (run / "results.json").is_file()
        assert sorted(p.name for p in run.iterdir()) == ["adapter", "results.json"]
    assert len(calls) == 1 and calls[0][0] == tmp_path / "extras-probe" and calls[0][1] is result and calls[0][2] is model


def test_caft_extras_round_trip_and_lora_saves_a_peft_adapter(tmp_path, tiny):
    from workbench.finetune import FinetuneResult
    from workbench.methods import get_method, run_extras
    from workbench.methods.caft import CaftIntervention
    from workbench.train import TrainResult

    model, info = tiny
    g = torch.Generator().manual_seed(0)
    ablation = CaftIntervention.from_directions({1: torch.randn(2, info.d_model, generator=g)}, info.to_dict(), source="t")
    caft = get_method("caft")
    caft.save_extras(tmp_path / "run", FinetuneResult("caft", None, TrainResult([1.0]), {"ablation": ablation}), model, info)
    found = run_extras(tmp_path / "run", info)
    assert list(found) == ["caft"] and list(found["caft"]) == ["ablation"]
    torch.testing.assert_close(found["caft"]["ablation"].basis(1), ablation.basis(1))
    assert run_extras(tmp_path / "run", info, skip="caft") == {} and run_extras(None, info) == {}
    assert caft.load_extras(tmp_path / "nothing", info) == {}

    lora = get_method("lora")
    inter = lora.intervention_cls(lora.config_cls(r=2), info.to_dict())
    inter.bind(model)
    lora.save_extras(tmp_path / "lora-run", FinetuneResult("lora", inter, TrainResult([1.0])), model, info)
    assert {p.name for p in (tmp_path / "lora-run" / "peft_adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
