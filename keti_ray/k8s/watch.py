"""List, then watch from the list's resourceVersion, with the `kubernetes` client's Watch.

The reflector pattern of client-go, which the API docs prescribe
(https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
- list (a consistent read), hand the whole set to `on_sync`, remember its resourceVersion;
- watch from it with bookmarks; every event (and every BOOKMARK) moves the resourceVersion on;
- a watch that ends (its timeout, a dropped connection) restarts from the last
  resourceVersion, so nothing is missed and nothing is seen twice;
- 410 Gone (the history was compacted) relists: `on_sync` again with the whole set;
- any other error backs off exponentially with jitter (capped), then carries on.
Passing `timeout_seconds` turns off the client's own single retry after a 410, so a 410
always reaches this loop.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from kubernetes import client, watch

log = logging.getLogger("keti_ray.k8s.watch")

HTTP_GONE = 410


@dataclass
class WatchStats:
    """What a ListWatch did, for /health and the tests."""

    lists: int = 0
    relists_410: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    last_error: str | None = None
    resource_version: str | None = None
    synced: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict:
        return {
            "lists": self.lists,
            "relists_410": self.relists_410,
            "watches": self.watches,
            "events": self.events,
            "bookmarks": self.bookmarks,
            "errors": self.errors,
            "last_error": self.last_error,
            "resource_version": self.resource_version,
            "synced": self.synced.is_set(),
        }


class ListWatch:
    """One resource's list+watch loop on a daemon thread.

    `list_fn` is a CoreV1Api list method (e.g. `api.list_node`); `on_sync(items, rv)` gets
    the full list as JSON dicts, `on_event(type, obj)` each ADDED/MODIFIED/DELETED (dicts).
    """

    def __init__(
        self,
        name: str,
        list_fn: Callable,
        on_sync: Callable[[list[dict], str], None],
        on_event: Callable[[str, dict], None],
        watch_timeout_s: int = 300,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        **list_kwargs,
    ) -> None:
        self.name = name
        self.list_fn = list_fn
        self.on_sync = on_sync
        self.on_event = on_event
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self.list_kwargs = list_kwargs
        self.stats = WatchStats()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"listwatch-{name}", daemon=True)

    def start(self) -> ListWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout)

    def wait_synced(self, timeout: float) -> bool:
        return self.stats.synced.wait(timeout)

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        rv: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch_from(rv)
                failures = 0
            except client.ApiException as exc:
                if exc.status == HTTP_GONE:
                    self.stats.relists_410 += 1
                    log.info("%s: watch from %s expired (410 Gone); relisting", self.name, rv)
                    rv = None
                    continue
                failures = self._failed(exc, failures)
            except Exception as exc:  # connection refused, reset, timeouts, bad JSON
                failures = self._failed(exc, failures)

    def _failed(self, exc: Exception, failures: int) -> int:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        low, high = self.backoff_s
        delay = min(high, low * 2**failures) * random.uniform(0.5, 1.0)
        log.warning("%s: %s; retrying in %.2fs", self.name, self.stats.last_error, delay)
        self._stop.wait(delay)
        return failures + 1

    def _list(self) -> str:
        resp = self.list_fn(_preload_content=False, _request_timeout=(5, 60), **self.list_kwargs)
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        rv = body["metadata"]["resourceVersion"]
        self.on_sync(body.get("items") or [], rv)
        self.stats.lists += 1
        self.stats.resource_version = rv
        self.stats.synced.set()
        return rv

    def _watch_from(self, rv: str) -> str:
        """Watch until the stream ends; returns the resourceVersion to resume from."""
        self._watch = w = watch.Watch()
        self.stats.watches += 1
        for event in w.stream(
            self.list_fn,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s,
            _request_timeout=(5, self.watch_timeout_s + 30),
            **self.list_kwargs,
        ):
            kind = event["type"]
            obj = event["raw_object"]
            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
            self.stats.resource_version = rv
            if kind == "BOOKMARK":
                self.stats.bookmarks += 1
                continue
            self.stats.events += 1
            self.on_event(kind, obj)
            if self._stop.is_set():
                w.stop()
        if self._stop.is_set():
            return rv
        return w.resource_version or rv
