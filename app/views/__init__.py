"""The app's views and view-models: what each page shows, computed from models and result files (no streamlit here).

Two registries, filled by the modules of this package (one module per view; each registers itself on import, and the
registries import every module of the package the first time they are read), so there is no list of views or of
methods anywhere in the app:

* :data:`VIEWS`, the page's views (``register_view(PageView(...))``): a name (the selector's label and the URL's
  ``?view=…``), a place in the selector, what the view needs (:data:`NEEDS`) and its ``render(ctx)``.
  :mod:`app.main` draws the selected one from a :class:`ViewContext`. Adding a view is adding one module.
* :data:`METHOD_VIEWS`, what the *Method* view shows for one fine-tuning method (``register_method_view(name,
  build)``), keyed by the method name its module declares; a method without one gets the generic view.

A view module keeps its streamlit code behind ``ctx.page`` (the page object ``render`` is given) or in an import
inside ``render``, so importing this package never imports streamlit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import ConfigError
from workbench.registry import Registry

#: What a view can declare it needs (``PageView.needs``):
#: ``"pair"``: the loaded base/tuned pair (without one the view shows why there is none instead);
#: ``"prompt"``: the analysed prompt (and so the pair; without one the view shows what to do instead);
#: ``"marked_heads"``: the heads the tuned side's method acts on (computed only for views that need them);
#: ``"runs_folder"``: the sidebar's runs folder and why it cannot be read, if it cannot.
NEEDS = frozenset({"pair", "prompt", "marked_heads", "runs_folder"})


@dataclass
class ViewContext:
    """What :mod:`app.main` hands a view's ``render``: the page to draw on and what the view declared it needs
    (the rest stays at its default).

    Attributes:
        page: ``streamlit`` or a container: where the view draws.
        loaded: the :class:`~app.views.load.SharedPair` (``"pair"``, ``"prompt"``).
        analysis: the prompt's :class:`~app.views.analysis.PromptAnalysis` (``"prompt"``).
        counterfactual: the counterfactual prompt, ``""`` when none (``"prompt"``).
        key: the pair's cache key (``"pair"``, ``"prompt"``).
        marked: ``[[layer, head], ...]`` the method acts on (``"marked_heads"``).
        runs_dir, runs_problem: the runs folder and why it cannot be searched (``"runs_folder"``).
        sink: view part -> figures, for the export buttons (views with ``exports``).
    """

    page: Any
    loaded: Any = None
    analysis: Any = None
    counterfactual: str = ""
    key: str = ""
    marked: list = field(default_factory=list)
    runs_dir: str = ""
    runs_problem: str | None = None
    sink: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PageView:
    """One view of the page.

    Attributes:
        name: the selector's label and the value of ``?view=`` in the URL.
        order: its place in the selector (ascending; the first is the default view).
        needs: a subset of :data:`NEEDS`.
        render: ``(ctx: ViewContext) -> figures drawn`` (a list of them, or their number).
        exports: an analysis view whose figures the "Export this analysis" buttons under it save (``ctx.sink``:
            the view may fill it part by part; else its returned figures are exported).
    """

    name: str
    order: int
    needs: frozenset[str]
    render: Callable[[ViewContext], Any]
    exports: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = self.needs - NEEDS
        if unknown:
            raise ConfigError(f"view {self.name!r} needs {sorted(unknown)}, which the page does not provide; known: {sorted(NEEDS)}")

    def ready(self, loaded: Any, analysis: Any) -> bool:
        """Whether the page has what the view cannot draw without: a pair (``"pair"``), an analysed prompt (``"prompt"``)."""
        return not ("pair" in self.needs and loaded is None) and not ("prompt" in self.needs and analysis is None)

    @property
    def module(self) -> str:
        """The module that defines it (a module registering again, e.g. reloaded, is the same view)."""
        return self.render.__module__


@dataclass(frozen=True)
class MethodViewSpec:
    """What the *Method* view shows for one method: ``build(intervention, model, analysis=None, pos=-1) ->
    MethodView`` (:class:`app.views.method.MethodView`)."""

    method: str
    build: Callable[..., Any]

    @property
    def module(self) -> str:
        return self.build.__module__


def _same_module(a: Any, b: Any) -> bool:
    return a.module == b.module


#: The page's views, by name.
VIEWS: Registry[PageView] = Registry("view", __name__, same=_same_module, modules=True)
#: The method views, by method name.
METHOD_VIEWS: Registry[MethodViewSpec] = Registry("method view", __name__, same=_same_module, modules=True)


def register_view(view: PageView) -> PageView:
    """Register a page view (in its own module, at import).

    Raises:
        ConfigError: another module registered a view of that name.
    """
    return VIEWS.register(view.name, view)


def register_method_view(method: str, build: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``build`` as the *Method* view of ``method``; returns ``build``.

    Raises:
        ConfigError: another module registered a view for that method.
    """
    METHOD_VIEWS.register(method, MethodViewSpec(method, build))
    return build


def page_views() -> list[PageView]:
    """Every registered page view, in selector order."""
    return sorted(VIEWS.specs(), key=lambda v: (v.order, v.name))
