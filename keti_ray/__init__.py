"""keti-ray: SM-share GPU allocation on Ray."""

__version__ = "0.1.0"
