"""The policy host: which policy decides, swapped safely, and the serving pointer followed.

One registry names every policy (the heuristics and `ppo`). A new policy is loaded OUTSIDE
any lock (a PPO checkpoint takes a while) and swapped in under a short lock, so a decision
sees the old policy or the new one, never half of each. A policy that cannot be loaded (a
missing or tampered checkpoint) leaves the current one serving and says why (`error`, shown
in /health). The pointer follower is a thread that survives every error and logs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from keti_ray.allocators import HEURISTICS, make_allocator
from keti_ray.allocators.base import Allocator
from keti_ray.fragmentation import TypicalPods
from keti_ray.promotion import read_pointer

log = logging.getLogger("keti_ray.booking.policy")

CONFIG_KEYS = ("policy", "checkpoint", "sha256", "pointer")


@dataclass(frozen=True)
class PolicySpec:
    """Which policy decides: a heuristic by name (`fgd` by default) or a PPO checkpoint
    (`ppo` = the shipped one, or `checkpoint: PATH` verified by its manifest), possibly
    reached through a serving pointer written by `keti-ray retrain`."""

    name: str = "fgd"
    checkpoint: str | None = None
    sha256: str | None = None
    pointer: str | None = None

    @classmethod
    def from_config(cls, config: dict | None) -> PolicySpec:
        """From a Serve user_config: {"policy": NAME}, {"checkpoint": PATH, "sha256": HEX},
        or {"pointer": PATH}."""
        if config is not None and not isinstance(config, dict):
            raise ValueError(
                "user_config must be an object with policy, checkpoint, sha256 or pointer"
            )
        config = dict(config or {})
        unknown = set(config) - set(CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"user_config: unknown key(s) {sorted(map(str, unknown))[:5]}; "
                f"accepted: {', '.join(CONFIG_KEYS)}"
            )
        for key in CONFIG_KEYS:
            if config.get(key) is not None and not isinstance(config[key], str):
                raise ValueError(f"user_config.{key} must be a string")
        if config.get("pointer"):
            return cls.from_pointer(config["pointer"])
        checkpoint = config.get("checkpoint")
        name = config.get("policy") or ("ppo" if checkpoint else "fgd")
        return cls(name=name, checkpoint=checkpoint, sha256=config.get("sha256"))

    @classmethod
    def from_pointer(cls, path: str) -> PolicySpec:
        record = read_pointer(path)
        return cls(record["policy"], record.get("checkpoint"), record.get("sha256"), str(path))

    def config(self) -> dict:
        """What to persist: the pointer alone when there is one (re-read on restart, so a
        promotion made while the service was down is served), else the spec itself."""
        if self.pointer:
            return {"pointer": self.pointer}
        out = {"policy": self.name, "checkpoint": self.checkpoint, "sha256": self.sha256}
        return {k: v for k, v in out.items() if v is not None}


def load_ppo(spec: PolicySpec, typical: TypicalPods, seed: int) -> tuple[Allocator, str]:
    """The PPO allocator of a verified checkpoint and its version `ppo@<digest[:12]>`."""
    from keti_ray.rl.checkpoint import verify_checkpoint
    from keti_ray.rl.policy import DEFAULT_CHECKPOINT, load_ppo_allocator

    root = spec.checkpoint or DEFAULT_CHECKPOINT
    manifest = verify_checkpoint(root, expected_sha256=spec.sha256)
    allocator = load_ppo_allocator(root, typical=typical, seed=seed)
    return allocator, f"ppo@{manifest['checkpoint_sha256'][:12]}"


def _heuristic(name: str) -> Callable[[PolicySpec, TypicalPods, int], tuple[Allocator, str]]:
    return lambda spec, typical, seed: (make_allocator(name, typical, seed), name)


# The one registry of policies: name -> loader(spec, typical, seed) -> (allocator, version).
POLICIES: dict[str, Callable[[PolicySpec, TypicalPods, int], tuple[Allocator, str]]] = {
    **{name: _heuristic(name) for name in HEURISTICS},
    "ppo": load_ppo,
}


class PolicyHost:
    """The serving policy. `current()` is what a decision uses; `set()` swaps it."""

    def __init__(
        self,
        typical: TypicalPods,
        seed: int = 0,
        on_change: Callable[[PolicySpec, str], None] | None = None,
    ) -> None:
        self.typical = typical
        self.seed = seed
        self.on_change = on_change
        self._swap = threading.Lock()  # serialises set() calls (loading is outside it)
        self._lock = threading.Lock()  # guards the (spec, allocator, version) triple
        self.spec = PolicySpec()
        self.allocator: Allocator = make_allocator("fgd", typical, seed)
        self.version = "fgd"
        self.error: str | None = None
        self._refused: PolicySpec | None = None
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()

    def current(self) -> tuple[Allocator, str]:
        with self._lock:
            return self.allocator, self.version

    def set(self, spec: PolicySpec) -> str:
        """Serve `spec`. An unknown name raises ValueError (a config error, 4xx/deploy error);
        a checkpoint that cannot be loaded keeps the current policy and records why."""
        if spec.name not in POLICIES:
            raise ValueError(
                f"user_config.policy {spec.name!r} is unknown; accepted: {', '.join(POLICIES)}"
            )
        with self._swap:
            if spec == self.spec:
                return self.version
            try:
                allocator, version = POLICIES[spec.name](spec, self.typical, self.seed)
            except Exception as exc:  # refused or broken checkpoint: keep what serves now
                where = f"pointer {spec.pointer} names " if spec.pointer else ""
                self.error = (
                    f"{where}policy {spec.name!r} ({spec.checkpoint or 'shipped checkpoint'}) "
                    f"refused: {type(exc).__name__}: {str(exc)[:300]}; still serving "
                    f"{self.version}"
                )
                self._refused = spec
                log.warning("%s", self.error)
                return self.version
            with self._lock:
                self.spec, self.allocator, self.version = spec, allocator, version
            self.error, self._refused = None, None
            log.info("serving policy %s", version)
        if self.on_change is not None:
            self.on_change(spec, version)
        return version

    def set_typical(self, typical: TypicalPods) -> str:
        """A new typical-pod mix (the live mix): the serving policy is rebuilt with it, so
        FGD (or the PPO policy's FGD features) scores for the pods that come now. A rebuild
        that fails keeps the current allocator (and says why in `error`)."""
        with self._swap:
            self.typical = typical
            spec = self.spec
            try:
                allocator, version = POLICIES[spec.name](spec, typical, self.seed)
            except Exception as exc:
                self.error = (
                    f"new typical-pod mix not applied to {self.version}: "
                    f"{type(exc).__name__}: {str(exc)[:300]}"
                )
                log.warning("%s", self.error)
                return self.version
            with self._lock:
                if self.spec == spec:
                    self.allocator, self.version = allocator, version
            return self.version

    def refresh_pointer(self) -> str:
        """Follow a serving pointer that a retrain has switched since the last look; a
        pointer that cannot be read, or names a refused checkpoint, keeps the current one."""
        pointer = self.spec.pointer or (self._refused.pointer if self._refused else None)
        if not pointer:
            return self.version
        try:
            spec = PolicySpec.from_pointer(pointer)
        except ValueError as exc:
            self.error = f"{exc}; still serving {self.version}"
            return self.version
        if spec != self.spec and spec != self._refused:
            return self.set(spec)
        if spec == self.spec and self.error and self._refused is None:
            self.error = None  # the pointer is readable again
        return self.version

    # ---- the follower thread -------------------------------------------------------------

    def start_follower(self, period_s: float = 2.0) -> None:
        if self._follower is not None:
            return
        self._follower = threading.Thread(
            target=self._follow, args=(period_s,), name="policy-pointer", daemon=True
        )
        self._follower.start()

    def _follow(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.refresh_pointer()
            except Exception as exc:  # never let one bad look end the follower
                self.error = f"pointer follower: {type(exc).__name__}: {str(exc)[:300]}"
                log.exception("pointer follower failed; will look again in %.1fs", period_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the follower and wait for it: a look in progress may still be writing the
        serving policy to the store, which the caller is about to close."""
        self._stop.set()
        follower = self._follower
        if follower is not None and follower is not threading.current_thread():
            follower.join(timeout_s)
            if follower.is_alive():
                log.warning("pointer follower still busy after %.0fs; closing anyway", timeout_s)
