"""Presentation of reports: terminal text, JSON, one self-contained HTML file.

``metrics`` computes and serializes; this package only draws. The CLI and ``embedmig.command``
render through ``render``.
"""

from __future__ import annotations

from pathlib import Path

from embedmig.errors import ConfigError
from embedmig.metrics.report import Report

FORMATS = ("text", "json", "html")


def render(report: Report, fmt: str = "text", *, styled: bool = False) -> str:
    """``report`` as ``text`` (ANSI colours with ``styled``), ``json`` or self-contained ``html``."""
    if fmt == "json":
        return report.to_json()
    if fmt == "html":
        from embedmig.render.html import render_html  # matplotlib: only for HTML

        return render_html(report)
    if fmt == "text":
        from embedmig.render.text import render_text

        return render_text(report, styled=styled)
    raise ConfigError(f"report format {fmt!r} is not one of {', '.join(FORMATS)}")


def format_of(path: Path) -> str:
    """The format a report file's name asks for: ``.json``, ``.html``/``.htm``, else text."""
    return {".json": "json", ".html": "html", ".htm": "html"}.get(path.suffix.lower(), "text")
