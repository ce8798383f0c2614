"""`python -m keti_ray.cli` runs the `keti-ray` command."""

from keti_ray.cli import main

main()
