"""Charts as inline SVG, drawn on the server: no script, no library, nothing fetched from
elsewhere (Homeport runs offline)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 640, 160, 24


def bars(points: list[tuple[str, float]], unit: str, title: str) -> Markup:
    """A bar chart of (label, value) points, labels under the first and last bars."""
    top = max((value for _, value in points), default=0.0)
    if top <= 0:
        return Markup(f'<p class="empty">{escape(title)}: nothing recorded yet.</p>')
    step = (WIDTH - 2 * PAD) / len(points)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + PAD}" role="img" aria-label="{escape(title)}">',
        f'<text x="{PAD}" y="14" class="chart-title">{escape(title)} (max {top:.4g} {escape(unit)})</text>',
    ]
    for index, (label, value) in enumerate(points):
        height = (HEIGHT - PAD) * value / top
        x = PAD + index * step
        parts.append(
            f'<rect x="{x:.1f}" y="{HEIGHT - height:.1f}" width="{max(step - 2, 1):.1f}" height="{height:.1f}">'
            f"<title>{escape(label)}: {value:.4g} {escape(unit)}</title></rect>"
        )
    parts.append(f'<text x="{PAD}" y="{HEIGHT + 16}" class="chart-axis">{escape(points[0][0])}</text>')
    parts.append(
        f'<text x="{WIDTH - PAD}" y="{HEIGHT + 16}" text-anchor="end" class="chart-axis">{escape(points[-1][0])}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))
