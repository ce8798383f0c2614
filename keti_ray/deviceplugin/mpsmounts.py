"""What an MPS tenant gets mounted, and who is one (research and sources: README.md, "MPS mounts").

An MPS client needs the pipe directory (it connects to the control daemon's `control` socket
there, then to its server) and the server's shared memory at /dev/shm.  Connecting to a socket
or opening a FIFO works through a read-only bind mount (the kernel exempts special files from
the read-only-mount check; measured with a read-only bind in a user namespace), so by default
the pipe directory is mounted read-only: a tenant can connect but cannot create, replace or
remove anything there.  `rw` is the fallback should a driver's client need to write in it;
`none` is for nodes that run no MPS.  Whole-GPU and green-context tenants get neither mount.
"""

from __future__ import annotations

from keti_ray.constants import GPU_UNITS_PER_DEVICE, MPS_PIPE_DIR, MPS_SHM_CONTAINER_PATH
from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.shares import Mechanism

MPS_MOUNT_MODES = ("ro", "rw", "none")


def validate_mps_mounts(mode: str) -> str:
    """'ro', 'rw' or 'none'; ValueError naming the accepted forms otherwise."""
    if mode not in MPS_MOUNT_MODES:
        raise ValueError(f"mps_mounts must be one of {MPS_MOUNT_MODES}, got {mode!r}")
    return mode


def is_mps_tenant(units: int, decided: str | None, configured: str | None) -> bool:
    """A share of one GPU served by MPS: not a whole GPU, not a green-context share.

    `decided` is the allocator's mechanism for this container (None: no decision);
    `configured` is the plugin's VAI_MECHANISM (None or 'auto': the shim may pick MPS)."""
    if units >= GPU_UNITS_PER_DEVICE:
        return False
    mechanism = decided if decided is not None else configured
    return mechanism not in (Mechanism.GREEN.value, Mechanism.EXCLUSIVE.value)


def mps_mounts(mode: str, pipe_host_dir: str, shm_host_dir: str) -> list[pb.Mount]:
    """The mounts an MPS tenant gets under `mode` (none for 'none')."""
    if mode == "none":
        return []
    return [
        pb.Mount(container_path=MPS_PIPE_DIR, host_path=pipe_host_dir, read_only=mode == "ro"),
        # read-write: the shm files are the client<->server channel (NVIDIA's device plugin
        # and DRA driver mount it read-write too)
        pb.Mount(container_path=MPS_SHM_CONTAINER_PATH, host_path=shm_host_dir, read_only=False),
    ]
