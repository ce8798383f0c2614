"""`local_serve` retries `serve.start` when, and only when, Serve's proxy misses Ray's readiness
timeout, and says so when it gives up.

The seam: Ray 2.60's `serve_start` reads that timeout from the module global
`ray.serve._private.api.HTTP_PROXY_TIMEOUT` at each call (no setting or env var sets it). Making it
1 ms for the first calls makes the real proxy of a real local Ray really miss it; nothing is mocked
but that number."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest

from . import factories
from .factories import SERVE_START_ATTEMPTS, local_serve

pytestmark = pytest.mark.slow
TINY = 0.001


def late_proxy(monkeypatch: pytest.MonkeyPatch, late_calls: int) -> list[float]:
    """Give the first `late_calls` calls of `serve.start` a TINY proxy timeout and later calls
    Ray's own; returns the timeout each call ran with."""
    from ray.serve._private import api

    real_start, real_timeout = api.serve_start, api.HTTP_PROXY_TIMEOUT
    timeouts: list[float] = []

    def serve_start(*args, **kwargs):
        timeouts.append(TINY if len(timeouts) < late_calls else real_timeout)
        monkeypatch.setattr(api, "HTTP_PROXY_TIMEOUT", timeouts[-1])
        return real_start(*args, **kwargs)

    monkeypatch.setattr(api, "serve_start", serve_start)
    return timeouts


def hello(request) -> str:
    return "hello"


def test_a_late_proxy_is_retried_and_setup_succeeds(monkeypatch, caplog):
    timeouts = late_proxy(monkeypatch, late_calls=1)
    with caplog.at_level(logging.WARNING, logger=factories.__name__), local_serve() as port:
        assert timeouts == [TINY, 60]  # serve.run below calls it again
        from ray import serve

        serve.run(serve.deployment(hello).bind(), name="hello", route_prefix="/")
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert (answer.status_code, answer.text) == (200, "hello")
    [retry] = [r.getMessage() for r in caplog.records if r.name == factories.__name__]
    assert f"attempt 1/{SERVE_START_ATTEMPTS}" in retry
    assert factories.PROXY_NOT_READY in retry


def test_it_gives_up_after_the_last_attempt(monkeypatch):
    monkeypatch.setattr(factories, "SERVE_START_ATTEMPTS", 2)  # one Ray start less to wait for
    timeouts = late_proxy(monkeypatch, late_calls=2)
    with pytest.raises(TimeoutError, match="all 2 attempts") as got:
        with local_serve():
            pytest.fail("local_serve started Serve")
    assert timeouts == [TINY] * 2
    assert factories.PROXY_NOT_READY in str(got.value.__cause__)


def test_another_error_is_not_retried(monkeypatch):
    """A port already taken fails the proxy at once, with no timeout: raised on the first call."""
    from ray.exceptions import RayTaskError

    timeouts = late_proxy(monkeypatch, late_calls=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(factories, "_free_port", lambda: taken.getsockname()[1])
        with pytest.raises(RayTaskError, match="Failed to bind to address"):
            with local_serve():
                pytest.fail("local_serve started Serve on a taken port")
    assert timeouts == [60]
