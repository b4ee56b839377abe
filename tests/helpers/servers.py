"""Run an ASGI app with uvicorn on a free port in a background thread (real HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

__all__ = ["serve_in_thread", "wait_http"]


def wait_http(
    url: str, *, timeout_s: float = 120.0, ok: tuple[int, ...] = (200,)
) -> httpx.Response:
    """GET `url` until it answers one of `ok` (or fail after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code in ok:
                return response
            last = response.status_code, response.text[:300]
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready in {timeout_s}s: {last}")


@contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:`port`; yields the base URL; stops on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
