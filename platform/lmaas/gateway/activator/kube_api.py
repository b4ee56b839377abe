"""The few Kubernetes API calls the gateway makes, over httpx.

In a pod it finds the API server from ``KUBERNETES_SERVICE_HOST``/``_PORT`` and
authenticates with the service-account token (re-read every minute: bound tokens rotate),
verifying the server with the service-account CA. `LMAAS_KUBE_API_URL` points it elsewhere
(the tests' stand-in). Errors come out as `BackendError` with the server's own message.

`API_CALLS` lists every (verb, API group, resource) the gateway's code calls: the chart's
gateway ClusterRole grants exactly these, and the tests check both against the calls the
gateway really makes (the requests carry the user agent ``lmaas-gateway/<version>``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from lmaas import __version__
from lmaas.gateway.activator.backend import BackendError

__all__ = ["API_CALLS", "USER_AGENT", "KubeApi"]

USER_AGENT = f"lmaas-gateway/{__version__}"

API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        # The activator: a model's services, their pods' addresses, scaling.
        ("list", "apps", "deployments"),
        ("patch", "apps", "deployments/scale"),
        ("list", "", "services"),
        ("list", "discovery.k8s.io", "endpointslices"),
        # Adapter traffic: where each Adapter is placed; its request-rate annotation.
        ("list", "lmaas.io", "adapters"),
        ("patch", "lmaas.io", "adapters"),
    }
)
"""(verb, API group, resource) of every call `KubeApi` makes: the gateway's RBAC."""

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_TOKEN_TTL_S = 60.0


class KubeApi:
    """LIST and scale against one API server (see the module docstring)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        account_dir: Path = SERVICE_ACCOUNT_DIR,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if url is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise BackendError(
                    "LMAAS_SCALE_BACKEND=kubernetes outside a pod: set LMAAS_KUBE_API_URL to "
                    "the API server's URL"
                )
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        ca = account_dir / "ca.crt"
        self.url = url.rstrip("/")
        self._token_path = account_dir / "token"
        self._token: tuple[float, str | None] = (float("-inf"), None)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            transport=transport,
            timeout=timeout_s,
            verify=str(ca) if ca.is_file() else True,
            headers={"User-Agent": USER_AGENT},
        )

    def _auth(self) -> dict[str, str]:
        read_at, token = self._token
        if time.monotonic() - read_at >= _TOKEN_TTL_S:
            try:
                token = self._token_path.read_text().strip() or None
            except OSError:
                token = None
            self._token = (time.monotonic(), token)
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, path, headers={**self._auth(), **(headers or {})}, **kwargs
            )
        except httpx.HTTPError as exc:
            raise BackendError(f"Kubernetes API unreachable ({type(exc).__name__}: {exc})") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            raise BackendError(
                f"Kubernetes API: {method} {path} answered {response.status_code}"
                f" ({message or response.reason_phrase})"
            )
        return body if isinstance(body, dict) else {}

    async def list(
        self, group_version: str, plural: str, *, namespace: str | None, selector: str
    ) -> list[dict[str, Any]]:
        """Objects of `plural` (all namespaces when `namespace` is None) matching `selector`."""
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        where = f"/namespaces/{namespace}" if namespace else ""
        body = await self._call(
            "GET", f"{root}{where}/{plural}", params={"labelSelector": selector}
        )
        items = body.get("items") or []
        return [i for i in items if isinstance(i, dict)]

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas through its ``scale`` subresource (as kubectl scale)."""
        await self._call(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
            json={"spec": {"replicas": replicas}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def patch_annotations(
        self,
        group_version: str,
        plural: str,
        *,
        namespace: str,
        name: str,
        annotations: dict[str, str],
    ) -> None:
        """Merge `annotations` into an object's (a JSON merge patch of its metadata only)."""
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        await self._call(
            "PATCH",
            f"{root}/namespaces/{namespace}/{plural}/{name}",
            json={"metadata": {"annotations": annotations}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()
