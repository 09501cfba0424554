"""The *Predictions & logit lens* view (the page's first, default view): both models' next-token candidates after
the chosen position, the per-token KL and the logit lens over a window of positions (drawn by
:func:`app.render.predictions_tab`)."""

from __future__ import annotations

from app.views import PageView, ViewContext, register_view


def _show(ctx: ViewContext) -> list:
    from app import render

    return render.predictions_tab(ctx.analysis, ctx.key, ctx.loaded, ctx.sink)


register_view(PageView("Predictions & logit lens", order=10, needs={"prompt"}, render=_show, exports=True))
