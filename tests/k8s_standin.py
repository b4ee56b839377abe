"""A stateful stand-in for the Kubernetes API: kmock's emulator with the fixes it needs.

kmock 0.8 stores and serves objects over the real Kubernetes HTTP API, so kopf, kubectl
and helm can talk to it. It lacks a few server behaviours those clients rely on; this
subclass adds them (numbers as in shared/K8S-TESTING.md):

 1. uid / resourceVersion / creationTimestamp / generation stamped on create, the
    resourceVersion bumped on every PATCH and PUT (and checked when a patch names one);
 2. paths of the cluster-scoped `namespaces` resource parsed right;
 3. `v1/namespaces`, CRDs and every kind the chart and the operator use declared;
 4. a failed JSON-patch `test` answers 422 Invalid, not 500;
 5. WATCH ends after `timeoutSeconds` (it ignores resourceVersion: clients that re-watch
    often, as the tests configure kopf to, re-list and miss nothing for long);
 6. core discovery answers `groupVersion: v1`, not `/v1`;
 7. LIST answers carry `kind: <Kind>List` and `apiVersion`;
 8. `labelSelector` (=, ==, !=, in, notin, exists, !exists) and `fieldSelector`
    (metadata.name / metadata.namespace) are applied to LIST and WATCH;
 9. PUT replaces the whole object;
10. errors carry the standard reasons NotFound, AlreadyExists, Conflict, Invalid;
11. a created CRD is served at once and reports Established (helm waits for it);
12. a Deployment's ``scale`` subresource behaves as on a real server: GET answers an
    ``autoscaling/v1`` Scale, PATCH changes only ``spec.replicas`` (the gateway's
    activator scales through it); EndpointSlices are declared.

It also records every resource request it serves (`LmaasEmulator.calls`: user agent, verb,
API group, resource[/subresource]), so tests can check what the operator and the gateway
really call against the RBAC the chart grants them.

What it still is not: no controllers (no Pods from Deployments), no garbage collection,
no admission, RBAC, schema validation or /openapi. Tests check schemas separately.

`KubeStandIn` runs it on its own thread and event loop, so synchronous tests, kopf's
KopfRunner thread, kubectl and helm subprocesses all reach it at `url`.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import enums, parsing, rendering

__all__ = ["ApiCall", "KubeStandIn", "LmaasEmulator", "matches_selector"]

# (group/version/plural, kind, namespaced, subresources)
SHORT_NAMES = {
    "Namespace": ("ns",),
    "Pod": ("po",),
    "Service": ("svc",),
    "ConfigMap": ("cm",),
    "ServiceAccount": ("sa",),
    "ResourceQuota": ("quota",),
    "Deployment": ("deploy",),
    "StatefulSet": ("sts",),
    "PodDisruptionBudget": ("pdb",),
    "NetworkPolicy": ("netpol",),
    "CustomResourceDefinition": ("crd", "crds"),
    "PersistentVolumeClaim": ("pvc",),
}
BUILTIN_RESOURCES: list[tuple[str, str, bool, tuple[str, ...]]] = [
    ("v1/namespaces", "Namespace", False, ("status",)),
    ("v1/pods", "Pod", True, ("status",)),
    ("v1/services", "Service", True, ("status",)),
    ("v1/secrets", "Secret", True, ()),
    ("v1/configmaps", "ConfigMap", True, ()),
    ("v1/serviceaccounts", "ServiceAccount", True, ()),
    ("v1/resourcequotas", "ResourceQuota", True, ("status",)),
    ("v1/events", "Event", True, ()),
    ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True, ("status",)),
    ("v1/endpoints", "Endpoints", True, ()),
    ("apps/v1/deployments", "Deployment", True, ("status", "scale")),
    ("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True, ()),
    ("apps/v1/statefulsets", "StatefulSet", True, ("status", "scale")),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True, ("status",)),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, ()),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True, ()),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True, ()),
    ("rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", False, ()),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", "ClusterRoleBinding", False, ()),
    (
        "apiextensions.k8s.io/v1/customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("status",),
    ),
    ("coordination.k8s.io/v1/leases", "Lease", True, ()),
    ("events.k8s.io/v1/events", "Event", True, ()),
]

_CRDS = kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions")


@attrs.frozen
class ApiCall:
    """One request as RBAC sees it: who (user agent), verb, API group, resource."""

    agent: str
    verb: str
    group: str
    resource: str

    @property
    def rule(self) -> tuple[str, str, str]:
        return (self.verb, self.group, self.resource)


def _verb(request: rendering.Request) -> str:
    method = str(getattr(request.method, "value", request.method)).upper()
    if method == "GET":
        if request.name:
            return "get"
        return "watch" if request.params.get("watch") in ("true", "1") else "list"
    if method == "DELETE" and not request.name:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


_DEPLOYMENTS = kmock.resource("apps/v1/deployments")
_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def _parse_path(path: str, _original: Any = parsing.parse_path) -> parsing.ParsedPath:
    """Fix 2: `/api/v1/namespaces[/<name>[/status|finalize]]` is the namespaces resource."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) > 3 else None,
            subresource=parts[4] if len(parts) > 4 else None,
        )
    return _original(path)


if getattr(parsing.parse_path, "__name__", "") != "_parse_path":
    parsing.parse_path = _parse_path  # rendering.Request._parse looks it up on the module


_SELECTOR_PART = re.compile(
    r"\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*"
)


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def matches_selector(labels: dict[str, str], selector: str | None) -> bool:
    """Kubernetes label selector semantics (equality-, set-based and existence)."""
    for part in _split_selector(selector or ""):
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
            ok = (
                (labels.get(key) in choices) if set_op == "in" else (labels.get(key) not in choices)
            )
        else:
            ok = (key in labels) != bool(negate)
        if not ok:
            return False
    return True


def _matches_fields(obj: dict[str, Any], selector: str | None) -> bool:
    for part in filter(None, (selector or "").split(",")):
        key, _, value = part.partition("=")
        negate = key.endswith("!")
        key = key.rstrip("!=")
        node: Any = obj
        for step in key.split("."):
            node = node.get(step) if isinstance(node, dict) else None
        if (str(node) == value.lstrip("=")) == negate:
            return False
    return True


def _visible(request: rendering.Request, obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return matches_selector(labels, request.params.get("labelSelector")) and _matches_fields(
        obj, request.params.get("fieldSelector")
    )


@attrs.define(kw_only=True)
class LmaasEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the ten fixes of the module docstring."""

    _versions: Iterable[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _kinds: dict[Any, str] = attrs.field(factory=dict, init=False)
    _scopes: dict[Any, bool] = attrs.field(factory=dict, init=False)
    # (METHOD, path regex) → status: injected failures, e.g. to stop a reconcile half-way.
    faults: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    # Every resource request served, in order (see the module docstring).
    calls: list[ApiCall] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind, namespaced, subresources in BUILTIN_RESOURCES:
            self.declare(
                key,
                kind,
                namespaced=namespaced,
                subresources=subresources,
                short_names=SHORT_NAMES.get(kind, ()),
            )

    def declare(
        self,
        key: str,
        kind: str,
        *,
        namespaced: bool,
        subresources: Iterable[str] = (),
        short_names: Iterable[str] = (),
    ) -> None:
        """Fix 3: make a resource discoverable (kopf, kubectl and helm discover first)."""
        resource = kmock.resource(key)
        self.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs=_VERBS,
            shortnames=set(short_names),
            subresources=set(subresources),
        )
        self._kinds[resource] = kind
        self._scopes[resource] = namespaced

    def declare_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self.declare(
                f"{spec['group']}/{version['name']}/{spec['names']['plural']}",
                spec["names"]["kind"],
                namespaced=spec["scope"] == "Namespaced",
                subresources=tuple(version.get("subresources") or {}),
                short_names=spec["names"].get("shortNames") or (),
            )

    def _next_version(self) -> str:
        return str(next(self._versions))  # type: ignore[call-overload]

    def _stored(self, request: rendering.Request) -> Any:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural:
            plural = request.resource.plural + (
                f"/{request.subresource}" if request.subresource else ""
            )
            self.calls.append(
                ApiCall(
                    agent=request.headers.get("User-Agent", ""),
                    verb=_verb(request),
                    group=request.resource.group or "",
                    resource=plural,
                )
            )
        for (method, pattern), status in list(self.faults.items()):
            verb = str(getattr(request.method, "value", request.method)).upper()
            if verb == method and re.search(pattern, request.url.path):
                raise kmock.KubernetesError(status=status, reason="InjectedFault", message=pattern)
        if request.resource == _DEPLOYMENTS and request.subresource == "scale" and request.name:
            return await self._scale(request)
        if request.resource is not None and request.method == enums.method.PUT and request.name:
            return await self._replace(request)
        if request.resource is not None:
            self._stamp(request)
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc

    def _stamp(self, request: rendering.Request) -> None:
        """Fix 1: server-set metadata on create, a new resourceVersion on every change."""
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if request.namespace and self._namespaced(request.resource):
                meta.setdefault("namespace", request.namespace)
            if request.resource == _CRDS:
                self._establish(data)
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_version()
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
        elif request.action == enums.action.UPDATE and request.name:
            stored = self._stored(request)
            version = self._next_version()
            if isinstance(data, dict):
                meta = data.get("metadata") or {}
                wanted = meta.get("resourceVersion")
                if (
                    stored is not None
                    and wanted
                    and wanted != stored.get("metadata", {}).get("resourceVersion")
                ):
                    raise kmock.KubernetesError(
                        status=409, reason="Conflict", message="the object has been modified"
                    )
                data.setdefault("metadata", {})["resourceVersion"] = version
                if "spec" in data and stored is not None and not request.subresource:
                    generation = int(stored.get("metadata", {}).get("generation") or 1)
                    data["metadata"]["generation"] = generation + 1
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _establish(self, crd: dict[str, Any]) -> None:
        """Fix 11: a created CRD is served at once and reports Established (helm waits)."""
        self.declare_crd(crd)
        crd["status"] = {
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {"type": t, "status": "True", "reason": t, "lastTransitionTime": _now()}
                for t in ("NamesAccepted", "Established")
            ],
        }

    async def _scale(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Fix 12: ``deployments/<name>/scale``: read or set ``spec.replicas`` only."""
        async with self._lock:
            stored = self._stored(request)
            if stored is None:
                raise kmock.KubernetesObjectNotFoundError()
            if request.method in (enums.method.PATCH, enums.method.PUT):
                replicas = ((request.data or {}).get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    raise kmock.KubernetesError(
                        status=422, reason="Invalid", message="spec.replicas: must be an int >= 0"
                    )
                stored.patch(
                    {
                        "spec": {"replicas": replicas},
                        "metadata": {"resourceVersion": self._next_version()},
                    }
                )
                await self._buses[request.resource].put({"type": "MODIFIED", "object": stored.raw})
            body = stored.raw
        return aiohttp.web.json_response(
            {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": request.name, "namespace": request.namespace},
                "spec": {"replicas": (body.get("spec") or {}).get("replicas", 0)},
                "status": {"replicas": (body.get("status") or {}).get("replicas", 0)},
            }
        )

    def _namespaced(self, resource: Any) -> bool:
        return self._scopes.get(resource, False)

    async def _replace(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Fix 9: PUT replaces the object (keeping uid and creation time)."""
        async with self._lock:
            stored = self._stored(request)
            if stored is None:
                raise kmock.KubernetesObjectNotFoundError()
            old_meta = stored.get("metadata", {})
            new = dict(request.data)
            meta = new.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "generation"):
                if key in old_meta:
                    meta[key] = old_meta[key]
            meta["resourceVersion"] = self._next_version()
            stored.create(new)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
        return aiohttp.web.json_response(new)

    async def _serve_version(self, request: rendering.Request) -> Any:
        """Fix 6: the core group's groupVersion is `v1`."""
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        return payload

    async def _serve_list(self, request: rendering.Request) -> Any:
        """Fixes 7 and 8: kind/apiVersion on lists, selectors applied."""
        payload = await super()._serve_list(request)
        resource = request.resource
        assert resource is not None
        payload["items"] = [i for i in payload["items"] if _visible(request, i)]
        payload["kind"] = f"{self._kinds.get(resource, 'Object')}List"
        payload["apiVersion"] = (
            resource.version if not resource.group else f"{resource.group}/{resource.version}"
        )
        payload["metadata"] = {"resourceVersion": self._next_version()}
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        """Fixes 5 and 8: the stream ends after `timeoutSeconds` (clients then re-list and
        re-watch, as with a real server) and carries only what the selectors match."""
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        events = super()._serve_watch(request).__aiter__()
        try:
            while True:
                remaining = (
                    None if deadline is None else deadline - asyncio.get_running_loop().time()
                )
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(events.__anext__(), remaining)
                except (TimeoutError, StopAsyncIteration):
                    return
                if isinstance(event, dict) and not _visible(request, event.get("object") or {}):
                    continue
                yield event
        finally:
            await events.aclose()

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """Fix 10: standard reasons, no tracebacks."""
        if isinstance(exc, kmock.KubernetesError):
            status = exc.status
            reason = {404: "NotFound", 409: "AlreadyExists", 422: "Invalid"}.get(status, exc.reason)
            if status == 409 and exc.reason == "Conflict":
                reason = "Conflict"
            message = exc.message or reason
        else:
            status, reason, message = 500, "InternalError", repr(exc)
        body = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": status,
            "reason": reason,
            "message": message,
            "details": {},
        }
        return aiohttp.web.json_response(body, status=status)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeStandIn:
    """The emulator served on 127.0.0.1 from a background thread, with a kubeconfig."""

    def __init__(self, folder: Path, crds: Iterable[dict[str, Any]] = ()) -> None:
        self.folder = folder
        self.crds = list(crds)
        self.emulator: LmaasEmulator | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: Any = None

    def __enter__(self) -> KubeStandIn:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        started.result(timeout=30)
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "standin", "user": {"token": "standin"}}],
                    "contexts": [
                        {
                            "name": "standin",
                            "context": {
                                "cluster": "standin",
                                "user": "standin",
                                "namespace": "default",
                            },
                        }
                    ],
                    "current-context": "standin",
                }
            )
        )
        self.kubeconfig.chmod(0o600)
        return self

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    async def _start(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._stop = asyncio.Event()

        async def serve() -> None:
            emulator = LmaasEmulator()
            for crd in self.crds:
                emulator.declare_crd(crd)
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
            assert self._stop is not None
            self._stop.set()
            await self._done

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def declare_crd(self, crd: dict[str, Any]) -> None:
        assert self.emulator is not None
        self._loop.call_soon_threadsafe(self.emulator.declare_crd, crd)

    def fail(self, method: str, path_pattern: str, status: int = 503) -> None:
        """Answer `status` to every `method` request whose path matches, until `heal()`."""
        assert self.emulator is not None
        self.emulator.faults[(method.upper(), path_pattern)] = status

    def heal(self) -> None:
        assert self.emulator is not None
        self.emulator.faults.clear()

    def calls_by(self, agent_prefix: str) -> set[tuple[str, str, str]]:
        """(verb, group, resource) of every call made with a user agent starting so."""
        assert self.emulator is not None
        calls = list(self.emulator.calls)
        return {c.rule for c in calls if c.agent.startswith(agent_prefix)}

    def dump(self) -> str:
        """Every stored object, for failure messages."""
        assert self.emulator is not None
        keys = [f"{r.plural}/{ns}/{name}" for (r, ns, name) in self.emulator.objects]
        return json.dumps(keys, indent=1)
