"""The *Attention* view: one head's pattern in both models and its change, defaulting to the head whose pattern
changed most; the method's heads are boxed (drawn by :func:`app.render.attention_tab`)."""

from __future__ import annotations

from app.views import PageView, ViewContext, register_view


def _show(ctx: ViewContext) -> list:
    from app import render

    return render.attention_tab(ctx.analysis, ctx.marked, ctx.key)


register_view(PageView("Attention", order=30, needs={"prompt", "marked_heads"}, render=_show, exports=True))
