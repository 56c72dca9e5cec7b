"""`--models LIST|all` as the CLI's subcommands take it."""

from __future__ import annotations

from bench.errors import UsageError


def select_models(text: str) -> tuple[list[str], dict[str, str]]:
    """The models named (or every available one for 'all'), and the unavailable ones' reasons."""
    from servers import registry

    infos = {info.name: info for info in registry.describe_all()}
    if text.strip() == "all":
        return [n for n, i in infos.items() if i.available], {}
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in infos]
    if unknown or not names:
        raise UsageError(f"unknown model(s) {', '.join(unknown) or text!r}; known: {', '.join(infos)} or 'all'")
    return names, {m: infos[m].reason for m in names if not infos[m].available}
