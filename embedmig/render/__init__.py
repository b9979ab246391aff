"""Presentation of reports: terminal text, JSON, one self-contained HTML file.

``metrics`` computes and serializes; this package only draws. The CLI and ``embedmig.command``
render through ``render``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

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


def embedding_lines(embedding: dict[str, Any]) -> list[str]:
    """The report's lines about embedding cost (text and HTML)."""
    if not embedding:
        return []
    cached = f" ({embedding['cached']:,} from the cache)" if embedding.get("cached") else ""
    estimated = " (estimated)" if embedding.get("estimated") else ""
    line = (
        f"embedding: {embedding['texts']:,} text(s) embedded{cached}, "
        f"{embedding['requests']:,} request(s), {embedding['tokens']:,} input tokens{estimated}"
    )
    if embedding.get("cost") is not None:
        line += f", cost {_format_money(embedding['cost'])}"
    lines = [line]
    if "forecast_tokens" in embedding:
        estimated = " (estimated)" if embedding.get("forecast_tokens_estimated") else ""
        upgrade = f"the upgrade: about {embedding['forecast_tokens']:,} input tokens{estimated}"
        if embedding.get("forecast_cost") is not None:
            upgrade += f", {_format_money(embedding['forecast_cost'])}"
        if embedding.get("forecast_seconds") is not None:
            upgrade += f", {_format_seconds(embedding['forecast_seconds'])} of embedding"
            upgrade += f" at {embedding['texts_per_second']:,.1f} documents/s"
        else:
            upgrade += ", time unknown (the cache served the whole sample)"
        lines.append(upgrade)
    return lines


def _format_money(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def _format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Package(types.ModuleType):
    """``embedmig.render`` is the ``render`` function in the public API, and this package's name
    too: once a submodule is imported first (``embedmig.render.html``), the import system binds
    the package under that name, so the package answers a call as the function does."""

    def __call__(self, report: Report, fmt: str = "text", *, styled: bool = False) -> str:
        return render(report, fmt, styled=styled)


sys.modules[__name__].__class__ = _Package
