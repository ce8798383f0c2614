"""The FGD paper's published table (../shared/traces/README.md): mean unallocated GPU % at
130% arrived over seeds 42-51, per pod list and policy. Used by reports and benchmarks to
show how far a reproduction is from the published figure.
"""

from __future__ import annotations

POLICIES = ("random", "dotprod", "clustering", "packing", "bestfit", "fgd")

UNALLOCATED_AT_130: dict[str, dict[str, float]] = {
    name: dict(zip(POLICIES, values, strict=True))
    for name, values in {
        "default": (12.53, 9.15, 8.12, 8.00, 6.92, 4.61),
        "gpushare40": (14.00, 10.44, 9.98, 9.97, 8.31, 5.85),
        "gpushare80": (18.78, 15.51, 15.15, 15.00, 12.99, 10.70),
        "gpuspec10": (12.57, 9.61, 7.82, 7.54, 6.70, 5.05),
        "gpuspec25": (13.06, 10.37, 7.92, 7.02, 6.77, 5.26),
        "multigpu20": (11.31, 7.94, 6.44, 6.29, 6.07, 4.35),
        "multigpu40": (9.91, 5.81, 4.50, 4.26, 4.77, 3.01),
        "cpu050": (8.76, 6.73, 6.21, 6.28, 6.21, 4.79),
        "cpu200": (16.23, 12.30, 10.08, 9.78, 7.60, 4.96),
    }.items()
}

DEFAULT_AT_100 = {
    "random": 13.70,
    "dotprod": 9.38,
    "clustering": 8.35,
    "packing": 8.22,
    "bestfit": 7.14,
    "fgd": 4.77,
}
