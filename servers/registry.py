"""Every I/O model by name, imported lazily so that one missing package breaks only its model."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from servers.base import EchoServer

# name -> (module, class); order is the report's order: blocking first, asynchronous last.
_MODELS: dict[str, tuple[str, str]] = {
    "threads": ("servers.threads_server", "ThreadsServer"),
    "fork": ("servers.fork_server", "ForkServer"),
    "nonblocking": ("servers.nonblocking_server", "NonblockingServer"),
    "select": ("servers.select_server", "SelectServer"),
    "poll": ("servers.poll_server", "PollServer"),
    "epoll": ("servers.epoll_server", "EpollServer"),
    "epoll-et": ("servers.epoll_et_server", "EpollEdgeServer"),
    "selectors": ("servers.selectors_server", "SelectorsServer"),
    "sigio": ("servers.sigio_server", "SigioServer"),
    "asyncio": ("servers.asyncio_server", "AsyncioServer"),
    "uvloop": ("servers.uvloop_server", "UvloopServer"),
    "io_uring": ("servers.io_uring_server", "IoUringServer"),
    "native": ("servers.native_server", "NativeServer"),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    category: str
    mechanism: str
    available: bool
    reason: str

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "category": self.category,
            "mechanism": self.mechanism,
            "available": self.available,
            "reason": self.reason,
        }


# Models of the user's own, on the same base: BENCH_EXTRA_MODELS="name=package.module:Class,...".
EXTRA_MODELS_ENV = "BENCH_EXTRA_MODELS"


def _all_models() -> dict[str, tuple[str, str]]:
    models = dict(_MODELS)
    for entry in os.environ.get(EXTRA_MODELS_ENV, "").split(","):
        name, _, target = entry.strip().partition("=")
        module, _, cls = target.partition(":")
        if name and module and cls:
            models[name] = (module, cls)
    return models


def model_names() -> list[str]:
    return list(_all_models())


def load(name: str) -> type[EchoServer]:
    models = _all_models()
    if name not in models:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(models)}")
    module, cls = models[name]
    return getattr(importlib.import_module(module), cls)


def category(name: str) -> str | None:
    """The model's I/O model in Stevens' terms (UNP §6.2; its class attribute `category`),
    without checking that it can run here (native's check builds it); None for a name the
    registry does not know or cannot import."""
    try:
        return load(name).category
    except Exception:  # noqa: BLE001 - a report must render whatever a model module does on import
        return None


def describe(name: str) -> ModelInfo:
    try:
        server = load(name)
    except Exception as exc:  # noqa: BLE001 - a broken model module must not break the others
        return ModelInfo(name, "?", "?", False, f"cannot import: {exc}")
    reason = server.unavailable_reason()
    return ModelInfo(name, server.category, server.mechanism, reason is None, reason or "")


def describe_all() -> list[ModelInfo]:
    return [describe(name) for name in model_names()]
