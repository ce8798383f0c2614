"""The device-plugin transport: a gRPC server on a Unix socket that registers with kubelet.

Kubelet's rules (../shared/docs/deviceplugin-v1beta1.md) drive the order of things here:
serve FIRST, then Register (kubelet dials back inside Register); every ListAndWatch message is
the full device list; when kubelet restarts it deletes our socket and re-creates
`kubelet.sock`, so a watcher polls both and restarts + re-registers within ~0.1-0.3 s.
Subclasses supply the devices and the Allocate / GetPreferredAllocation logic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from keti_ray.constants import KUBELET_SOCKET_NAME
from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.deviceplugin._gen import api_pb2_grpc as pbg

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


class PluginError(Exception):
    """A request the plugin refuses; becomes a gRPC error with this status and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _sock_id(path: Path) -> tuple[int, int] | None:
    """Identity of a socket file (inode, ctime): changes when kubelet re-creates it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_ctime_ns)


class DevicePluginServer(pbg.DevicePluginServicer):
    """Base plugin: serving, registration with retry, restart detection, the device stream.

    Subclasses implement `list_devices`, `allocate` and (optionally) `preferred_allocation`,
    and call `devices_changed()` whenever health changes so ListAndWatch sends a new full list.
    """

    resource_name: str = ""
    preferred_allocation_available: bool = False
    pre_start_required: bool = False

    def __init__(
        self,
        plugin_dir: str | os.PathLike[str],
        endpoint: str,
        *,
        poll_interval_s: float = 0.1,
        register_timeout_s: float = 15.0,
        max_workers: int = 16,
    ) -> None:
        if "/" in endpoint or not endpoint.endswith(".sock"):
            raise ValueError(
                f"endpoint must be a socket file name like 'keti-gpu.sock', got {endpoint!r}"
            )
        self.plugin_dir = Path(plugin_dir)
        self.endpoint = endpoint
        self.socket_path = self.plugin_dir / endpoint
        if len(str(self.socket_path).encode()) > MAX_UNIX_PATH:
            raise ValueError(
                f"plugin_dir + endpoint is {len(str(self.socket_path).encode())} bytes; a Unix "
                f"socket path holds at most {MAX_UNIX_PATH}: use a shorter plugin_dir"
            )
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET_NAME
        self._poll = poll_interval_s
        self._register_timeout = register_timeout_s
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._cv = threading.Condition()
        self._version = 0  # bumped by devices_changed(); streams wait on it
        self._registered_kubelet: tuple[int, int] | None = None
        self.registrations = 0  # how many times Register succeeded (tests and status read it)
        self.last_registered_at: float | None = None
        self._lock = threading.Lock()

    # ----- what subclasses provide -------------------------------------------------------
    def list_devices(self) -> list[pb.Device]:
        raise NotImplementedError

    def allocate(self, request: pb.AllocateRequest) -> pb.AllocateResponse:
        raise NotImplementedError

    def preferred_allocation(
        self, request: pb.PreferredAllocationRequest
    ) -> pb.PreferredAllocationResponse:
        return pb.PreferredAllocationResponse(
            container_responses=[
                pb.ContainerPreferredAllocationResponse() for _ in request.container_requests
            ]
        )

    def on_start(self) -> None:
        """Hook: start health watchers etc. (called once by start())."""

    def on_stop(self) -> None:
        """Hook: stop what on_start started."""

    # ----- lifecycle ---------------------------------------------------------------------
    def start(self, wait_registered_s: float | None = None) -> None:
        """Serve on the socket, then register in the background (retrying until kubelet is up).

        With `wait_registered_s`, block up to that long for the first registration.
        """
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._serve()
        self.on_start()
        self._watcher = threading.Thread(
            target=self._watch, name=f"dp-watch-{self.endpoint}", daemon=True
        )
        self._watcher.start()
        if wait_registered_s is not None:
            deadline = time.monotonic() + wait_registered_s
            while self.registrations == 0 and time.monotonic() < deadline:
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving, end the streams and remove our socket."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        self.on_stop()
        self._shutdown_server()

    def devices_changed(self) -> None:
        """Tell every open ListAndWatch stream to send the full list again."""
        with self._cv:
            self._version += 1
            self._cv.notify_all()

    @property
    def registered(self) -> bool:
        return self._registered_kubelet is not None

    # ----- serving -----------------------------------------------------------------------
    def _serve(self) -> None:
        with self._lock:
            if self.socket_path.exists() or self.socket_path.is_symlink():
                self.socket_path.unlink()  # stale socket from an earlier run
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
            pbg.add_DevicePluginServicer_to_server(self, server)
            server.add_insecure_port(f"unix://{self.socket_path}")
            server.start()
            self._server = server
        log.info("%s: serving on %s", self.resource_name, self.socket_path)

    def _shutdown_server(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            if server is not None:
                server.stop(grace=0.2).wait(2)
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass

    def _restart_server(self) -> None:
        self._shutdown_server()
        with self._cv:
            self._version += 1  # old streams see a change and notice their context is gone
            self._cv.notify_all()
        self._serve()

    # ----- registration and restart detection --------------------------------------------
    def _register_once(self) -> None:
        options = pb.DevicePluginOptions(
            pre_start_required=self.pre_start_required,
            get_preferred_allocation_available=self.preferred_allocation_available,
        )
        req = pb.RegisterRequest(
            version=API_VERSION,
            endpoint=self.endpoint,
            resource_name=self.resource_name,
            options=options,
        )
        with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            pbg.RegistrationStub(channel).Register(req, timeout=self._register_timeout)

    def _watch(self) -> None:
        """Register, then keep watching for a kubelet restart (or our socket vanishing)."""
        backoff = self._poll
        while not self._stop.is_set():
            own_missing = not self.socket_path.exists()
            kubelet_id = _sock_id(self.kubelet_socket)
            if own_missing:
                log.warning("%s: socket %s gone; restarting", self.resource_name, self.socket_path)
                self._restart_server()
                self._registered_kubelet = None
            if kubelet_id is None:
                self._registered_kubelet = None  # kubelet down: register when it is back
            elif kubelet_id != self._registered_kubelet:
                if self._registered_kubelet is not None and not own_missing:
                    # kubelet.sock re-created but our socket survived: still restart, so
                    # kubelet's dial-back meets a fresh server.
                    self._restart_server()
                try:
                    self._register_once()
                    self._registered_kubelet = kubelet_id
                    self.registrations += 1
                    self.last_registered_at = time.time()
                    backoff = self._poll
                    log.info("%s: registered with kubelet", self.resource_name)
                except grpc.RpcError as e:
                    log.warning("%s: Register failed (%s); retrying", self.resource_name, e)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
            self._stop.wait(self._poll)

    # ----- the DevicePlugin service --------------------------------------------------------
    def GetDevicePluginOptions(self, request, context):  # noqa: N802 (gRPC names)
        return pb.DevicePluginOptions(
            pre_start_required=self.pre_start_required,
            get_preferred_allocation_available=self.preferred_allocation_available,
        )

    def ListAndWatch(self, request, context) -> Iterator[pb.ListAndWatchResponse]:  # noqa: N802
        server_at_start = self._server
        context.add_callback(self._wake)
        seen = -1
        while not self._stop.is_set() and context.is_active():
            with self._cv:
                if seen == self._version:
                    self._cv.wait(0.5)
                if seen == self._version:
                    continue
                seen = self._version
            if self._server is not server_at_start:
                return  # our server was replaced (kubelet restart); this stream is over
            yield pb.ListAndWatchResponse(devices=self.list_devices())

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def GetPreferredAllocation(self, request, context):  # noqa: N802
        return self._call(context, self.preferred_allocation, request)

    def Allocate(self, request, context):  # noqa: N802
        return self._call(context, self.allocate, request)

    def PreStartContainer(self, request, context):  # noqa: N802
        return pb.PreStartContainerResponse()

    def _call(self, context, fn, request):
        try:
            return fn(request)
        except PluginError as e:
            context.abort(e.code, e.message)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
