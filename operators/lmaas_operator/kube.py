"""A thin Kubernetes API client over plain dict manifests, and idempotent `ensure`.

Connection settings come from the `kubernetes` library's config loaders (in-cluster
service account, else kubeconfig); requests go through httpx. Errors are translated at
this boundary into `KubeError` and its subclasses, so handlers never see httpx.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from lmaas import __version__

__all__ = [
    "USER_AGENT",
    "AlreadyExists",
    "Conflict",
    "KubeClient",
    "KubeError",
    "KubeUnavailable",
    "NotFound",
    "is_subset",
]

USER_AGENT = f"lmaas-operator/{__version__}"
"""Sent with every request, so the API server's audit log (and the tests) can tell the
operator's calls apart from kopf's own (``kopf/<version>``)."""

# kind → (plural, namespaced) for everything the operator touches.
_KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "ResourceQuota": ("resourcequotas", True),
    "NetworkPolicy": ("networkpolicies", True),
    "ServiceAccount": ("serviceaccounts", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "Pod": ("pods", True),
    "Deployment": ("deployments", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "EndpointSlice": ("endpointslices", True),
    "Tenant": ("tenants", False),
    "Model": ("models", False),
    "GPUType": ("gputypes", False),
    "ModelService": ("modelservices", True),
    "Adapter": ("adapters", True),
    "FineTuneJob": ("finetunejobs", True),
}


class KubeError(Exception):
    """An answer of the Kubernetes API other than success."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    pass


class KubeUnavailable(KubeError):
    """The API server could not be reached (or answered 5xx): try again later."""


@dataclass(frozen=True)
class _Ref:
    api_version: str
    plural: str
    namespaced: bool


def _ref(api_version: str, kind: str) -> _Ref:
    try:
        plural, namespaced = _KINDS[kind]
    except KeyError:
        raise ValueError(f"kind {kind!r} is not known to the operator's client") from None
    return _Ref(api_version, plural, namespaced)


def _path(ref: _Ref, namespace: str | None, name: str | None = None) -> str:
    base = "/api/v1" if ref.api_version == "v1" else f"/apis/{ref.api_version}"
    if ref.namespaced:
        if not namespace:
            raise ValueError(f"{ref.plural} are namespaced: give a namespace")
        base += f"/namespaces/{namespace}"
    base += f"/{ref.plural}"
    return f"{base}/{name}" if name else base


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field of `desired` has the same value in `live` (drift check)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
    if isinstance(desired, str) and isinstance(live, int | float) and not isinstance(live, bool):
        return desired == str(live)
    return bool(desired == live)


class KubeClient:
    """CRUD on dict manifests. Build it with `from_environment()` or over any httpx client."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    @classmethod
    def from_environment(cls, *, timeout: float = 30.0) -> KubeClient:
        """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            # KUBECONFIG is read now, not when the kubernetes package was imported.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg
            )
        headers = {}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            prefix = cfg.api_key_prefix.get("authorization", "")
            headers["Authorization"] = token if token.startswith("Bearer") else f"Bearer {token}"
            if prefix and not token.startswith(prefix):
                headers["Authorization"] = f"{prefix} {token}"
        verify: Any = cfg.ssl_ca_cert if cfg.verify_ssl and cfg.ssl_ca_cert else cfg.verify_ssl
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file else None
        headers["User-Agent"] = USER_AGENT
        http = httpx.Client(
            base_url=cfg.host, headers=headers, verify=verify, cert=cert, timeout=timeout
        )
        return cls(http)

    def close(self) -> None:
        self.http.close()

    # Requests ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise KubeUnavailable(0, "Unreachable", f"{method} {path}: {exc}") from exc
        if response.is_success:
            return response.json() if response.content else {}
        try:
            body = response.json()
            reason, message = body.get("reason", ""), body.get("message", "")
        except ValueError:
            reason, message = "", response.text[:500]
        status = response.status_code
        error = {404: NotFound, 409: AlreadyExists if reason == "AlreadyExists" else Conflict}
        if status >= 500 or status == 429:
            raise KubeUnavailable(status, reason, f"{method} {path}: {message}")
        raise error.get(status, KubeError)(status, reason, f"{method} {path}: {message}")

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return self._request("GET", _path(_ref(api_version, kind), namespace, name))
        except NotFound:
            return None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        params = {}
        if labels:
            params["labelSelector"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        ref = _ref(api_version, kind)
        path = _path(ref, namespace) if namespace or not ref.namespaced else None
        if path is None:  # every namespace
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            path = f"{base}/{ref.plural}"
        items = self._request("GET", path, params=params).get("items") or []
        # Filter again client-side: a selector the server ignored must not widen the result.
        return [i for i in items if is_subset(dict(labels or {}), i["metadata"].get("labels", {}))]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        ref = _ref(body["apiVersion"], body["kind"])
        return self._request("POST", _path(ref, body["metadata"].get("namespace")), json=body)

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        path = _path(_ref(api_version, kind), namespace, name)
        if subresource:
            path += f"/{subresource}"
        return self._request(
            "PATCH",
            path,
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete; False if it was already gone."""
        try:
            self._request(
                "DELETE",
                _path(_ref(api_version, kind), namespace, name),
                params={"propagationPolicy": "Background"},
            )
        except NotFound:
            return False
        return True

    # Idempotent reconciliation -------------------------------------------------------

    def ensure(self, desired: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> str:
        """Create `desired` or bring the live object back to it; returns what was done.

        `ignore` lists top-level dotted paths (e.g. ``spec.replicas``) owned by someone
        else once the object exists: they are set on create and never patched.
        Answers ``created``, ``patched`` or ``unchanged``.
        """
        meta = desired["metadata"]
        api_version, kind = desired["apiVersion"], desired["kind"]
        name, namespace = meta["name"], meta.get("namespace")
        live = self.get(api_version, kind, name, namespace)
        if live is None:
            try:
                self.create(desired)
                return "created"
            except AlreadyExists:
                live = self.get(api_version, kind, name, namespace)
                if live is None:
                    raise KubeUnavailable(409, "Conflict", f"{kind} {name} flickers") from None
        wanted = _without(desired, ignore)
        if is_subset(wanted, live):
            return "unchanged"
        self.patch(api_version, kind, name, wanted, namespace)
        return "patched"


def _without(body: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    result = json.loads(json.dumps(body))
    for path in paths:
        node = result
        *parents, last = path.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return result
