"""The Ray Serve application of the keti-ray allocator (import path `serve.app:app`)."""
