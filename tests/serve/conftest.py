"""One local Ray + Serve for the whole tests/serve package (starting one costs ~10-20 s here).

Each module still deploys its own applications and its own state actor on it, and hands the
instance back clean (`serve_session`'s `clean()`: every application deleted, the detached state
actor killed and its name free), so no module sees another's bookings or configuration."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ..factories import local_serve


@dataclass(frozen=True)
class ServeSession:
    port: int
    clean: Callable[[], None]


def _clean() -> None:
    import ray
    from ray import serve

    from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME

    for name in list(serve.status().applications):
        serve.delete(name, _blocking=False)  # all at once, then wait for every one to go
    deadline = time.monotonic() + 60
    while serve.status().applications:
        if time.monotonic() > deadline:
            raise AssertionError(f"applications not deleted: {list(serve.status().applications)}")
        time.sleep(0.1)
    try:
        ray.kill(ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE), no_restart=True)
    except ValueError:
        return  # no state actor
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE)
        except ValueError:
            return  # gone: the next module's applications create their own
        time.sleep(0.1)
    raise AssertionError(f"the state actor {STATE_ACTOR_NAME} did not go away")


@pytest.fixture(scope="package")
def serve_session() -> Iterator[ServeSession]:
    """A private local Ray with Serve on a free loopback port, shared by the package's modules."""
    with local_serve() as port:
        yield ServeSession(port, _clean)
