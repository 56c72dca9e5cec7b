"""Headless Chromium for the real-browser tests: the system's chromium (Debian's `chromium` package), driven by
Playwright's Python package.

Playwright's own browser download (`playwright install`) is never used: this project has no network to fetch it
from. The pip wheel brings only the driver; the browser is the binary named by $BENCH_CHROMIUM, or /usr/bin/chromium,
or the first chromium on PATH.

    with Chromium() as browser:
        page, log = browser.open(path)      # a file:// page, every console error and request recorded
        assert not log.problems()
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

# What a laptop shows; screenshots are taken full page at this width.
VIEWPORT = {"width": 1366, "height": 768}
# Debian's chromium as root needs --no-sandbox; the rest keep it from reaching for the network on its own
# (updates, sync, field trials, QUIC probes). The fresh --user-data-dir is the profile Playwright is given.
FLAGS = (
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
# Any URL but those a self-contained page may load without the network (file:, data:, blob:, about:).
NOT_LOCAL = re.compile(r"^(?!file:|data:|blob:|about:)", re.IGNORECASE)
LAUNCH_TIMEOUT_MS = 60_000
PAGE_TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    """The chromium binary to drive, or None."""
    explicit = os.environ.get("BENCH_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if find_chromium() is None:
        return (
            "no chromium binary ($BENCH_CHROMIUM, /usr/bin/chromium or chromium on PATH): "
            "apt-get install -y chromium (.ci/run installs it)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed: pip install -e '.[dev]' (never `playwright install`)"
    return None


def require() -> None:
    """Skip the calling test when no browser can be had; in CI (CI=true) fail instead, since CI installs it."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class PageLog:
    """What a page did that a self-contained, working page must not do."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    network_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return (
            [f"console error: {m}" for m in self.console_errors]
            + [f"uncaught exception: {m}" for m in self.page_errors]
            + [f"failed request: {m}" for m in self.failed_requests]
            + [f"network request (blocked): {m}" for m in self.network_requests]
        )


class Chromium:
    """One headless chromium with a fresh profile in a temporary directory, closed (and the profile removed)
    on leaving the `with` block, whatever happened inside it."""

    def __init__(self, viewport: dict[str, int] | None = None) -> None:
        self.viewport = viewport or VIEWPORT
        self.executable = find_chromium()
        self._playwright: Any = None
        self._context: Any = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._drivers: list[int] = []
        self.logs: list[PageLog] = []
        self.blocked: list[str] = []  # non-local requests of pages not opened through open()
        self.leftovers: list[str] = []  # processes that did not exit on close and were killed

    def __enter__(self) -> Chromium:
        if self.executable is None:
            raise RuntimeError(unavailable_reason() or "no chromium")
        from playwright.sync_api import sync_playwright

        before = _children()
        self._profile = tempfile.TemporaryDirectory(prefix="bench-chromium-")
        try:
            self._playwright = sync_playwright().start()
            self._drivers = sorted(_children() - before)
            self._context = self._playwright.chromium.launch_persistent_context(
                self._profile.name,
                executable_path=self.executable,
                headless=True,
                args=list(FLAGS),
                viewport=self.viewport,
                timeout=LAUNCH_TIMEOUT_MS,
            )
            self._context.set_default_timeout(PAGE_TIMEOUT_MS)
            # Nothing may leave the machine: any non-local request is aborted before it is sent, and recorded.
            self._context.route(NOT_LOCAL, self._block)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _block(self, route: Any) -> None:
        """Any page's non-local request (a page opened by another, say): aborted before it is sent, recorded."""
        self.blocked.append(route.request.url)
        route.abort("blockedbyclient")

    def open(self, path: Path | str) -> tuple[Any, PageLog]:
        """A new tab showing `path` (a file, or any URL), loaded and idle, with its log."""
        url = Path(path).resolve().as_uri() if not re.match(r"^[a-z]+:", str(path)) else str(path)
        log = PageLog(url)
        self.logs.append(log)
        page = self._context.new_page()

        def block(route: Any) -> None:
            log.network_requests.append(route.request.url)
            route.abort("blockedbyclient")

        page.route(NOT_LOCAL, block)
        page.on("console", lambda m: log.console_errors.append(_console_text(m)) if m.type == "error" else None)
        page.on("pageerror", lambda e: log.page_errors.append(str(e)))
        page.on(
            "requestfailed",
            lambda r: None if r.url in log.network_requests else log.failed_requests.append(f"{r.url}: {r.failure}"),
        )

        page.goto(url, wait_until="load")
        page.wait_for_load_state("networkidle")
        return page, log

    def close(self) -> None:
        """Close the browser, stop the driver, remove the profile; kill any process of theirs left behind."""
        processes = _tree(self._drivers)
        try:
            if self._context is not None:
                self._context.close()
        except Exception:  # noqa: BLE001 - a browser that already died must not hide the test's own error
            pass
        finally:
            self._context = None
            try:
                if self._playwright is not None:
                    self._playwright.stop()
            finally:
                self._playwright = None
                self.leftovers = _reap(processes)
                if self._profile is not None:
                    self._profile.cleanup()
                    self._profile = None


def _console_text(message: Any) -> str:
    where = message.location or {}
    return f"{message.text} ({where.get('url', '?')}:{where.get('lineNumber', '?')})"


def _children() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children()}
    except psutil.Error:
        return set()


def _tree(pids: list[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants (the driver, the browser and its helpers)."""
    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
    return procs


def _reap(procs: list[psutil.Process], grace: float = 5.0) -> list[str]:
    """Wait for these processes to exit; kill those that do not. Returns a description of each one killed."""
    _, alive = psutil.wait_procs(procs, timeout=grace)
    killed = []
    for proc in alive:
        try:
            killed.append(f"{proc.pid} {proc.name()}")
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return killed
