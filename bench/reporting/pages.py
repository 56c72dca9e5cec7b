"""The Jinja2 environment every HTML page of bench is rendered with (templates/ beside it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2 import Environment


def environment() -> Environment:
    """bench.reporting's templates, HTML-escaped by default; jinja2 is imported on first use so
    that commands without a page do not pay for it."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("bench.reporting", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
