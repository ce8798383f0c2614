"""The TLS gate: kube-scheduler reaches the allocator's extender routes over mutual TLS.

Why a gate and not Serve's own HTTPS: Serve's proxy takes `ssl_ca_certs` but never sets
uvicorn's `ssl_cert_reqs`, so it does not ask for a client certificate (CERT_NONE), and its
routes could not tell a verified scheduler from anyone else anyway. kube-scheduler cannot
send a bearer token to an extender, only a client certificate (KubeSchedulerConfiguration
`extenders[].tlsConfig`). So this sidecar, in the allocator's head pod:
- listens with TLS and REQUIRES a client certificate signed by the scheduler-client CA
  (`ssl.CERT_REQUIRED`: no certificate, or another CA's, fails the handshake);
- forwards only POST /scheduler/{filter,prioritize,bind} to Serve on loopback, adding
  `Authorization: Bearer <KETI_RAY_TOKEN>`, so the allocator keeps requiring the token on
  every route (people and scripts send it themselves, through the ingress);
- answers 404 to everything else.

    python -m keti_ray.k8s.tlsgate --listen 0.0.0.0:8443 --upstream http://127.0.0.1:8000 \
        --cert /tls/tls.crt --key /tls/tls.key --client-ca /tls/client-ca.crt \
        --token-file /token/token
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EXTENDER_PATHS = ("/scheduler/filter", "/scheduler/prioritize", "/scheduler/bind")
MAX_BODY_BYTES = 4 * 1024 * 1024


def gate_app(upstream: str, token: str | None, timeout_s: float = 10.0) -> Starlette:
    """The ASGI app behind the TLS listener (the listener does the certificate check)."""
    http = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=timeout_s)

    async def forward(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"Error": "request body over 4 MiB"}, status_code=413)
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        if token:
            headers["authorization"] = f"Bearer {token}"
        try:
            resp = await http.post(request.url.path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return JSONResponse(
                {"Error": f"allocator unreachable: {type(exc).__name__}"}, status_code=502
            )
        return Response(
            resp.content,
            status_code=resp.status_code,
            media_type=resp.headers.get("content-type"),
        )

    async def not_here(request: Request) -> Response:
        return JSONResponse(
            {"detail": f"only POST {', '.join(EXTENDER_PATHS)} pass this gate"}, status_code=404
        )

    routes = [Route(p, forward, methods=["POST"]) for p in EXTENDER_PATHS]
    routes.append(Route("/{rest:path}", not_here, methods=["GET", "POST", "PUT", "DELETE"]))
    app = Starlette(routes=routes)
    app.state.http = http
    return app


def uvicorn_config(app: Starlette, host: str, port: int, cert: str, key: str, client_ca: str):
    """uvicorn with TLS that requires a client certificate from `client_ca`."""
    import uvicorn

    for label, path in (("--cert", cert), ("--key", key), ("--client-ca", client_ca)):
        if not Path(path).is_file():
            raise SystemExit(f"{label} {path}: no such file")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_ca_certs=client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        log_level="warning",
        access_log=False,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m keti_ray.k8s.tlsgate", description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:8443", help="host:port of the TLS listener")
    parser.add_argument("--upstream", default="http://127.0.0.1:8000", help="Serve on loopback")
    parser.add_argument("--cert", required=True, help="the gate's server certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    parser.add_argument("--client-ca", required=True, help="CA that signs scheduler client certs")
    parser.add_argument("--token-file", help="file holding KETI_RAY_TOKEN (added upstream)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        parser.error(f"--listen {args.listen!r}: expected host:port")
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    import uvicorn

    cfg = uvicorn_config(
        gate_app(args.upstream, token), host or "0.0.0.0", int(port), args.cert, args.key,
        args.client_ca,
    )  # fmt: skip
    uvicorn.Server(cfg).run()


if __name__ == "__main__":
    main()
