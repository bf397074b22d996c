"""Run the service under uvicorn: bind first (so ``port=0`` names its real port), then serve until a signal.

SIGINT or SIGTERM stops accepting connections, lets in-flight requests finish (at most ``shutdown_timeout_s``),
then lets the model worker finish its queue.
"""

from __future__ import annotations

import signal
import socket
import sys

from mmpretrain.serve.config import ServeConfig


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig) -> None:
    """Load what ``config`` names, bind, print ``listening on http://host:port`` on stderr, serve until stopped.

    Example:
        >>> serve(ServeConfig(encoder="model.ckpt", index="/data/idx", port=8000))  # doctest: +SKIP
    """
    import uvicorn

    from mmpretrain.serve.app import create_app
    from mmpretrain.serve.service import Service

    app = create_app(Service.load(config))
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    uv = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, timeout_keep_alive=5,
                        timeout_graceful_shutdown=int(config.shutdown_timeout_s), server_header=False)
    if config.token is None and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"mmpretrain-serve: warning: listening on {host} without token=: anyone who reaches this port can use "
              "the service", file=sys.stderr, flush=True)
    print(f"mmpretrain-serve: listening on http://{shown}:{port} (docs at /docs, search page at /)",
          file=sys.stderr, flush=True)
    # uvicorn re-raises the stopping signal once it has shut down; by then every request is answered, so the signal
    # is acknowledged here and the command exits 0 instead of dying by it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(uv).run(sockets=[sock])
