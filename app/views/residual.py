"""The *Residual stream* view: ``hook_resid_post`` of every layer, tuned − base, at every position, and the tracked
tokens' logit difference through the logit lens (drawn by :func:`app.render.residual_tab`)."""

from __future__ import annotations

from app.views import PageView, ViewContext, register_view


def _show(ctx: ViewContext) -> list:
    from app import render

    return render.residual_tab(ctx.analysis, ctx.key, ctx.loaded)


register_view(PageView("Residual stream", order=20, needs={"prompt"}, render=_show, exports=True))
