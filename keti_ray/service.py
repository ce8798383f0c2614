"""The allocation service; it lives in `keti_ray.booking` (store, policy host, metrics).

Kept so `from keti_ray.service import AllocationService` goes on working.
"""

from keti_ray.booking import *  # noqa: F403 (the same names, one list: keti_ray.booking.__all__)
from keti_ray.booking import __all__  # noqa: F401
