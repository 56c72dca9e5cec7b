"""How findings put numbers and lists into sentences, one way for every page."""

from __future__ import annotations

from collections.abc import Sequence


def figure(value: float) -> str:
    """A rate or cost as the findings print it: whole numbers from 100 up, one decimal below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def and_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'; '' for none."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def plural(count: int, noun: str, nouns: str = "") -> str:
    """'1 connection', '2,000 connections' (`nouns`: an irregular plural, e.g. 'processes')."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
