"""Stand-ins for runtime pods: the runtime's adapter API (`lmaas.protocol`) over HTTP.

The stand-in Kubernetes API runs no controllers, so the tests create the Pods a
Deployment would have, each pointing (podIP 127.0.0.1, containerPort) at one of these.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lmaas.protocol import AdapterState, LoadAdapterRequest

__all__ = ["FakeRuntime", "runtime_pod"]


class FakeRuntime:
    """Holds adapters like a runtime: load (POST), list (GET), unload (DELETE)."""

    def __init__(self) -> None:
        self.adapters: dict[str, LoadAdapterRequest] = {}
        self.loads = 0
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                states = [
                    AdapterState(adapter_id=a, rank=8, location="device").model_dump()
                    for a in runtime.adapters
                ]
                self._send(200, states)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = LoadAdapterRequest.model_validate_json(body)
                runtime.adapters[request.adapter_id] = request
                runtime.loads += 1
                self._send(
                    200,
                    AdapterState(
                        adapter_id=request.adapter_id, rank=8, location="device"
                    ).model_dump(),
                )

            def do_DELETE(self) -> None:
                adapter_id = self.path.rsplit("/", 1)[-1]
                found = runtime.adapters.pop(adapter_id, None)
                self._send(200 if found else 404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRuntime:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def runtime_pod(name: str, namespace: str, service: str, port: int) -> dict[str, Any]:
    """The Pod a runtime Deployment of `service` would run, served by a FakeRuntime."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/component": "runtime",
                "lmaas.io/model-service": service,
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "runtime",
                    "image": "x",
                    "ports": [{"name": "http", "containerPort": port}],
                }
            ]
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
