"""The *Heads & neurons* view: each head's write to the residual stream in both models and the MLP neurons whose
activation changed most, at a position or averaged; the method's heads are boxed (drawn by
:func:`app.render.heads_tab`)."""

from __future__ import annotations

from app.views import PageView, ViewContext, register_view


def _show(ctx: ViewContext) -> list:
    from app import render

    return render.heads_tab(ctx.analysis, ctx.marked, ctx.key)


register_view(PageView("Heads & neurons", order=40, needs={"prompt", "marked_heads"}, render=_show, exports=True))
