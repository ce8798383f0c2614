"""Debian tools for tests: headless Chromium for the `/ui` acceptance test and bench (Debian's
`chromium`, driven by Playwright's Python package through its `executable_path`: Playwright's
own browser builds are never downloaded), and `promtool` (Debian's `prometheus`). A missing
package is installed when we may (root, apt-get).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM_NAMES = ("chromium", "chromium-browser")
INSTALL_TIMEOUT_S = 900


class ToolUnavailable(RuntimeError):
    """Why a Debian tool (Chromium, promtool) cannot run here (tests skip with this message)."""


def apt_install(package: str) -> str | None:
    """apt-get install a Debian package; None on success, else what went wrong."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    run = {"env": env, "capture_output": True, "timeout": INSTALL_TIMEOUT_S}
    try:
        if subprocess.run(install, **run).returncode:
            subprocess.run(["apt-get", "update", "-q"], **run)
            done = subprocess.run(install, **run)
            if done.returncode:
                lines = done.stderr.decode(errors="replace").strip().splitlines()
                return lines[-1] if lines else f"apt-get exited {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None


def debian_tool(names: tuple[str, ...], package: str) -> str:
    """The path of a program, installing its Debian package when it is missing (root only);
    ToolUnavailable saying why when that is not possible."""
    for name in names:
        if found := shutil.which(name):
            return found
    problem = apt_install(package)
    for name in names:
        if found := shutil.which(name):
            return found
    raise ToolUnavailable(f"no {names[0]} on PATH; `apt-get install {package}` failed: {problem}")


def chromium_path() -> str:
    return debian_tool(CHROMIUM_NAMES, "chromium")


@contextmanager
def headless_chromium(width: int = 1600, height: int = 1000) -> Iterator[object]:
    """A Playwright browser context on the system Chromium (a fresh profile, no cookies)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise ToolUnavailable(f"playwright is not installed: {exc}") from exc
    executable = chromium_path()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=executable, headless=True, args=["--disable-gpu"]
            )
        except Exception as exc:  # a chromium that cannot start here (no sandbox, libs)
            raise ToolUnavailable(f"{executable} did not start: {exc}") from exc
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            yield context
            context.close()
        finally:
            browser.close()


def sign_in(page, base_url: str, token: str, timeout_ms: float = 30_000) -> None:
    """Open /ui, type the token into the sign-in page and wait for the map's first refresh."""
    page.goto(f"{base_url}/ui")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-generation]", timeout=timeout_ms)


def wait_until(page, expression: str, timeout_s: float = 15.0):
    """Poll a JS expression until it is truthy and return its value. (Playwright's
    wait_for_function evaluates strings with eval, which the page's CSP forbids; evaluate()
    goes through the DevTools protocol and is not subject to it.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression!r} still falsy after {timeout_s} s")
        time.sleep(0.1)
