"""Inline SVG charts: readable without JavaScript, no build step, no library.

The chart is drawn here and embedded in the page as markup; every label and
value goes through xhtml_escape. Each bar carries a <title>, so hovering
shows the exact figure, and the table under a chart repeats every number.
"""

from decimal import Decimal

from tornado.escape import xhtml_escape


def _nice_step(span):
    """A round step (1, 2 or 5 times a power of ten) giving about four gridlines."""
    raw = span / 4 if span > 0 else Decimal(1)
    power = Decimal(1)
    while power * 10 <= raw:
        power *= 10
    while power > raw:
        power /= 10
    for m in (1, 2, 5, 10):
        if power * m >= raw:
            return power * m
    return power * 10


def bar_chart(points, title, width=960, height=240, money=True):
    """An SVG bar chart of [(label, value)]: positive bars up, negative down from zero.

    `title` is the accessible name of the chart. Returns markup (a str).
    """
    pad_left, pad_right, pad_top, pad_bottom = 64, 12, 12, 36
    values = [Decimal(v) for _, v in points]
    top = max([Decimal(0)] + values)
    bottom = min([Decimal(0)] + values)
    step = _nice_step(top - bottom)
    # Counts: whole gridlines; money: no two gridlines that print the same.
    step = max(step, Decimal(1) if not money else Decimal("0.01"))
    top = (top / step).to_integral_value(rounding="ROUND_CEILING") * step
    bottom = (bottom / step).to_integral_value(rounding="ROUND_FLOOR") * step
    if top == bottom:
        top = bottom + step
    plot_w = width - pad_left - pad_right
    plot_h = height - pad_top - pad_bottom

    def y(v):
        return pad_top + float((top - v) / (top - bottom)) * plot_h

    fmt = (lambda v: f"{v:,.2f}") if money else (lambda v: f"{int(v):,}")
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{xhtml_escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{xhtml_escape(title)}</title>",
    ]
    tick = bottom
    while tick <= top:
        ty = y(tick)
        out.append(
            f'<line class="grid{" zero" if tick == 0 else ""}" x1="{pad_left}" '
            f'x2="{width - pad_right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text class="axis" x="{pad_left - 6}" y="{ty + 4:.1f}" text-anchor="end">'
            f"{xhtml_escape(fmt(tick))}</text>"
        )
        tick += step
    n = max(1, len(points))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.7)
    every = max(1, round(n / 12))  # about a dozen labels along the bottom
    for i, (label, value) in enumerate(points):
        value = Decimal(value)
        x = pad_left + i * slot + (slot - bar_w) / 2
        y0, y1 = sorted((y(Decimal(0)), y(value)))
        kind = "neg" if value < 0 else "pos"
        text = f"{label}: {fmt(value)}"
        out.append(
            f'<rect class="bar {kind}" x="{x:.1f}" y="{y0:.1f}" width="{bar_w:.1f}" '
            f'height="{max(y1 - y0, 0.5):.1f}"><title>{xhtml_escape(text)}</title></rect>'
        )
        if (n - 1 - i) % every == 0:  # counted from the end: the latest bar is labelled
            out.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - pad_bottom + 16}" '
                f'text-anchor="middle">{xhtml_escape(str(label))}</text>'
            )
    out.append("</svg>")
    return "".join(out)
