"""A stateful stand-in for the Kubernetes API (kmock's emulator), as the activator needs it.

A minimal copy of the k8s engineer's `tests/k8s_standin.py` (branch `k8s`; the lead
merges the two): the resources declared, label selectors applied to LIST (kmock ignores
them), standard error reasons — plus what the activator adds:

- ``discovery.k8s.io/v1`` EndpointSlices are declared;
- the ``scale`` subresource of Deployments behaves as on a real server: GET answers an
  ``autoscaling/v1`` Scale, PATCH changes only the Deployment's ``spec.replicas``.

There are no controllers: nothing creates Pods for a Deployment or EndpointSlices for a
Service. A test that needs replicas plays the controller itself.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, rendering

__all__ = ["KubeStandIn", "matches_selector"]

RESOURCES: list[tuple[str, str, bool, tuple[str, ...]]] = [
    ("v1/services", "Service", True, ("status",)),
    ("v1/pods", "Pod", True, ("status",)),
    ("apps/v1/deployments", "Deployment", True, ("status", "scale")),
    ("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True, ()),
]
_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
_DEPLOYMENTS = kmock.resource("apps/v1/deployments")
_SELECTOR_PART = re.compile(
    r"\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*"
)


def matches_selector(labels: dict[str, str], selector: str | None) -> bool:
    """Kubernetes label selector semantics (equality-, set-based and existence)."""
    parts, depth, current = [], 0, ""
    for char in selector or "":
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    for part in filter(str.strip, parts):
        m = _SELECTOR_PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad label selector {part!r}")
        negate, key, op, value, set_op, values = m.groups()
        if op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif set_op:
            choices = {v.strip() for v in values.split(",")}
            ok = (labels.get(key) in choices) == (set_op == "in")
        else:
            ok = (key in labels) != bool(negate)
        if not ok:
            return False
    return True


@attrs.define(kw_only=True)
class ActivatorEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with selectors, standard errors and the scale subresource."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind, namespaced, subresources in RESOURCES:
            self.resources[kmock.resource(key)] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=namespaced,
                verbs=_VERBS,
                subresources=set(subresources),
            )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource == _DEPLOYMENTS and request.subresource == "scale":
            return await self._scale(request)
        return await super()._handle(request)

    async def _scale(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            if request.action == enums.action.UPDATE:
                replicas = ((request.data or {}).get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    raise kmock.KubernetesError(
                        status=422, reason="Invalid", message="spec.replicas: must be >= 0"
                    )
                self.objects[key].patch({"spec": {"replicas": replicas}})
                await self._buses[request.resource].put(
                    {"type": "MODIFIED", "object": self.objects[key].raw}
                )
            deployment = self.objects[key].raw
        return aiohttp.web.json_response(
            {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": request.name, "namespace": request.namespace},
                "spec": {"replicas": deployment.get("spec", {}).get("replicas", 0)},
                "status": {"replicas": deployment.get("status", {}).get("replicas", 0)},
            }
        )

    async def _serve_list(self, request: rendering.Request) -> Any:
        payload = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        payload["items"] = [
            i
            for i in payload["items"]
            if matches_selector((i.get("metadata") or {}).get("labels") or {}, selector)
        ]
        return payload

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError):
            status, message = exc.status, exc.message or exc.reason
            reason = {404: "NotFound", 409: "AlreadyExists", 422: "Invalid"}.get(status, exc.reason)
        else:
            status, reason, message = 500, "InternalError", repr(exc)
        body = {"kind": "Status", "status": "Failure", "code": status, "reason": reason}
        return aiohttp.web.json_response(body | {"message": message}, status=status)


class KubeStandIn:
    """The emulator served on 127.0.0.1 from its own thread and event loop, at `url`.

    Tests read and change objects with `get`, `create` and `patch` (thread-safe).
    """

    def __init__(self) -> None:
        self.emulator: ActivatorEmulator | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: asyncio.Task[None] | None = None

    def __enter__(self) -> KubeStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._stop = asyncio.Event()

        async def serve() -> None:
            emulator = ActivatorEmulator()
            async with emulator, kmock.Server(emulator) as server:
                self.emulator = emulator
                self.url = str(server.url).rstrip("/")
                ready.set_result(None)
                assert self._stop is not None
                await self._stop.wait()

        self._done = self._loop.create_task(serve())
        await ready

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._stop is not None and self._done is not None
            self._stop.set()
            await self._done

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def get(self, key: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (a copy), or None."""

        async def read() -> dict[str, Any] | None:
            assert self.emulator is not None
            object_key = (kmock.resource(key), namespace, name)
            if object_key not in self.emulator.objects:
                return None
            obj = self.emulator.objects[object_key]
            return None if obj.deleted else dict(obj.raw)

        return self._run(read())

    def create(self, key: str, body: dict[str, Any]) -> None:
        """Store `body` as a real client's create would (a watch sees ADDED)."""

        async def create() -> None:
            assert self.emulator is not None
            resource = kmock.resource(key)
            meta = body["metadata"]
            async with self.emulator._lock:
                self.emulator.objects[(resource, meta["namespace"], meta["name"])] = body
                await self.emulator._buses[resource].put({"type": "ADDED", "object": body})

        self._run(create())

    def patch(self, key: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
        async def patch() -> None:
            assert self.emulator is not None
            resource = kmock.resource(key)
            async with self.emulator._lock:
                obj = self.emulator.objects[(resource, namespace, name)]
                obj.patch(changes)
                await self.emulator._buses[resource].put({"type": "MODIFIED", "object": obj.raw})

        self._run(patch())
