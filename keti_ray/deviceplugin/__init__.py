"""Kubelet device plugins (gRPC v1beta1) for SM-share GPUs and NPUs.

`server` is the transport (Unix sockets, registration, kubelet-restart detection), `gpu` and
`npu` are the two plugins, `nvml` discovers GPUs (or simulates them), `units` holds the GPU
unit <-> milli conversions and device-ID format, `preferred` picks a GPU for a request.
"""
