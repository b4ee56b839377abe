"""Routing on Kubernetes, against the API stand-in: tenants, adapters, plans, RBAC.

The gateway runs with the Kubernetes scale backend against the stand-in (`tests/k8s_standin`),
which holds ModelService Deployments, their Services and EndpointSlices, and Adapters. The
stand-in runs no pods: each endpoint has its own address (10.0.x.y, one per "pod"), and the
gateway's runtime transport forwards every call to the one real runtime of the session,
recording which address it was sent to — so where a request went is observable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmaas import kube_names as kn
from lmaas.gateway.activator.kube_api import API_CALLS
from lmaas_operator.crds import KINDS, crd_manifest
from tests.conftest import free_port
from tests.gateway.conftest import ADMIN_TOKEN, MODEL, gateway_settings
from tests.helpers.adapters import make_peft_adapter, pack_tar
from tests.helpers.servers import serve_in_thread
from tests.k8s_standin import KubeStandIn

pytestmark = pytest.mark.timeout(180)

ADAPTERS = "/apis/lmaas.io/v1alpha1/namespaces/tenant-acme/adapters"


class Cluster:
    """The stand-in, written through its HTTP API (as kubectl and the operator would)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    @staticmethod
    def path(group_version: str, plural: str, namespace: str, name: str | None = None) -> str:
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{root}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    def create(self, group_version: str, plural: str, body: dict[str, Any]) -> None:
        r = self.http.post(
            self.path(group_version, plural, body["metadata"]["namespace"]), json=body
        )
        assert r.status_code in (200, 201), r.text

    def patch(self, path: str, changes: dict[str, Any]) -> None:
        r = self.http.patch(
            path, json=changes, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert r.status_code == 200, r.text

    def get(self, path: str) -> dict[str, Any]:
        r = self.http.get(path)
        assert r.status_code == 200, r.text
        return r.json()

    def replicas(self, namespace: str, name: str) -> int:
        body = self.get(self.path("apps/v1", "deployments", namespace, name))
        return int(body["spec"]["replicas"])

    def service(
        self, namespace: str, name: str, pods: dict[str, str], *, tenant: str | None = None
    ) -> None:
        """A serverless ModelService at zero: a Deployment, its Service and one
        EndpointSlice per pod (name → address)."""
        labels = {kn.LABEL_MODEL_SERVICE: name, kn.LABEL_COMPONENT: "runtime"}
        if tenant:
            labels[kn.LABEL_TENANT] = tenant
        self.create(
            "apps/v1",
            "deployments",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": f"{name}-l4",
                    "namespace": namespace,
                    "labels": {**labels, kn.LABEL_MODEL: MODEL},
                    "annotations": {
                        kn.ANNOTATION_PLANNED_REPLICAS: "1",
                        kn.ANNOTATION_SERVERLESS: "true",
                        kn.ANNOTATION_IDLE_TIMEOUT: "600",
                    },
                },
                "spec": {"replicas": 0},
            },
        )
        self.create(
            "v1",
            "services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"ports": [{"name": "http", "port": 8001}]},
            },
        )
        for pod, address in pods.items():
            self.create(
                "discovery.k8s.io/v1",
                "endpointslices",
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{pod}-slice",
                        "namespace": namespace,
                        "labels": {kn.LABEL_SERVICE_NAME: name},
                    },
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8001}],
                    "endpoints": [
                        {
                            "addresses": [address],
                            "conditions": {"ready": True},
                            "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
                        }
                    ],
                },
            )


@dataclass
class Forwarder:
    """The gateway's runtime transport: forwards to the real runtime, remembers where to."""

    runtime_url: str
    generated: list[str] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/internal/generate":
                self.generated.append(request.url.host)
            async with httpx.AsyncClient(base_url=self.runtime_url, timeout=60) as upstream:
                response = await upstream.request(
                    request.method,
                    request.url.path,
                    content=request.content,
                    headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                )
            return httpx.Response(
                response.status_code, headers=response.headers, content=response.content
            )

        return httpx.MockTransport(handler)


@dataclass
class Gateway:
    url: str
    cluster: Cluster
    standin: KubeStandIn
    forwarder: Forwarder

    def key(self, tenant: str) -> dict[str, str]:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.post(f"{self.url}/admin/tenants", json={"name": tenant}, headers=admin)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{self.url}/admin/tenants/{tenant}/keys", headers=admin)
        return {"Authorization": f"Bearer {r.json()['key']}"}

    def chat(self, headers: dict[str, str], model: str = MODEL) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return httpx.post(
            f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=120
        )

    def sent_to(self, send: Callable[[], httpx.Response]) -> str:
        """The address the one request `send` makes was forwarded to."""
        before = len(self.forwarder.generated)
        r = send()
        assert r.status_code == 200, r.text
        assert len(self.forwarder.generated) == before + 1, "sent exactly once"
        return self.forwarder.generated[-1]


@contextmanager
def kubernetes_gateway(
    tmp_path: Path, database_url: str, runtime_url: str, setup: Callable[[Cluster], None]
) -> Iterator[Gateway]:
    from lmaas.gateway import create_app

    with KubeStandIn(tmp_path, [crd_manifest(k) for k in KINDS]) as standin:
        cluster = Cluster(standin.url)
        setup(cluster)
        settings = gateway_settings(
            tmp_path,
            database_url,
            runtime_url,
            scale_backend="kubernetes",
            kube_api_url=standin.url,
            adapter_rate_period_s=0.3,
            activation_timeout_s=60.0,
        )
        forwarder = Forwarder(runtime_url)
        app = create_app(settings, runtime_transport=forwarder.transport())
        with serve_in_thread(app, free_port()) as url:
            yield Gateway(url, cluster, standin, forwarder)
        cluster.http.close()


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _three_services(cluster: Cluster) -> None:
    cluster.service("lmaas-shared", "pool", {"pool-0": "10.0.1.1"})
    cluster.service("tenant-acme", "chat", {"chat-0": "10.0.2.1"}, tenant="acme")
    cluster.service("tenant-beta", "solo", {"solo-0": "10.0.3.1"}, tenant="beta")


def test_a_tenant_gets_its_own_service_else_the_shared_one_never_anothers(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    with kubernetes_gateway(tmp_path, database_url, runtime_url, _three_services) as gw:
        acme, beta, gamma = gw.key("acme"), gw.key("beta"), gw.key("gamma")
        assert gw.sent_to(lambda: gw.chat(acme)) == "10.0.2.1", "acme's own service"
        assert gw.sent_to(lambda: gw.chat(beta)) == "10.0.3.1", "beta's own service"
        assert gw.sent_to(lambda: gw.chat(gamma)) == "10.0.1.1", "no own service: the shared"
        # Only the services used were scaled up from zero; each to its plan.
        assert gw.cluster.replicas("tenant-acme", "chat-l4") == 1
        assert gw.cluster.replicas("lmaas-shared", "pool-l4") == 1
        # The request-size metrics say which service ran each request (the planner's input).
        metrics = httpx.get(f"{gw.url}/metrics").text
        for service in ("tenant-acme/chat", "tenant-beta/solo", "lmaas-shared/pool"):
            assert f'service="{service}"' in metrics

        # Without a shared service, a tenant with none of its own is refused: it is never
        # sent to another tenant's private service.
        r = gw.cluster.http.delete(
            gw.cluster.path("apps/v1", "deployments", "lmaas-shared", "pool-l4")
        )
        assert r.status_code == 200, r.text
        delta = gw.key("delta")
        time.sleep(5.5)  # the gateway lists Deployments at most every 5 s
        r = gw.chat(delta)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_served"
        assert gw.forwarder.generated.count("10.0.2.1") == 1
        assert gw.forwarder.generated.count("10.0.3.1") == 1

        # A running serverless service follows a new plan (the operator re-planned it):
        # the activator, which owns its replicas, brings it to the planned size and back.
        planned = gw.cluster.path("apps/v1", "deployments", "tenant-acme", "chat-l4")
        gw.cluster.patch(
            planned, {"metadata": {"annotations": {kn.ANNOTATION_PLANNED_REPLICAS: "3"}}}
        )
        wait_until("the plan of 3", lambda: gw.cluster.replicas("tenant-acme", "chat-l4") == 3)
        gw.cluster.patch(
            planned, {"metadata": {"annotations": {kn.ANNOTATION_PLANNED_REPLICAS: "2"}}}
        )
        wait_until("the plan of 2", lambda: gw.cluster.replicas("tenant-acme", "chat-l4") == 2)
        assert gw.cluster.replicas("tenant-beta", "solo-l4") == 1, "another service untouched"


def test_adapter_requests_prefer_its_pods_and_its_rate_reaches_the_adapter(
    tmp_path: Path, database_url: str, runtime_url: str, tiny_model_dir: Path
) -> None:
    def setup(cluster: Cluster) -> None:
        cluster.service(
            "tenant-acme", "chat", {"chat-0": "10.0.2.1", "chat-1": "10.0.2.2"}, tenant="acme"
        )

    with kubernetes_gateway(tmp_path, database_url, runtime_url, setup) as gw:
        acme = gw.key("acme")
        archive = pack_tar(
            make_peft_adapter(tiny_model_dir, tmp_path / "bot"), tmp_path / "bot.tgz"
        )
        r = httpx.post(
            f"{gw.url}/v1/adapters",
            headers=acme,
            files={"file": ("bot.tgz", archive.read_bytes())},
            data={"name": "bot"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        adapter_id = r.json()["id"]
        # Both pods are equally idle: the tie goes to chat-0 (10.0.2.1), which then holds it.
        assert gw.sent_to(lambda: gw.chat(acme, "bot")) == "10.0.2.1"

        # The operator placed the adapter on chat-1 (its status says so): requests go there.
        gw.cluster.create(
            "lmaas.io/v1alpha1",
            "adapters",
            {
                "apiVersion": "lmaas.io/v1alpha1",
                "kind": "Adapter",
                "metadata": {"name": "bot", "namespace": "tenant-acme"},
                "spec": {"service": "chat", "source": "s3://acme/bot"},
            },
        )
        gw.cluster.patch(
            f"{ADAPTERS}/bot/status", {"status": {"adapterId": adapter_id, "loadedOn": ["chat-1"]}}
        )
        wait_until(
            "a request on the placed pod",
            lambda: gw.sent_to(lambda: gw.chat(acme, "bot")) == "10.0.2.2",
            timeout_s=30,
        )
        assert {gw.sent_to(lambda: gw.chat(acme, "bot")) for _ in range(3)} == {"10.0.2.2"}
        # Base-model requests are not bound to the adapter's pods.
        assert gw.sent_to(lambda: gw.chat(acme)) in ("10.0.2.1", "10.0.2.2")

        # The gateway reports the adapter's request rate to the operator (its annotation),
        # every 0.3 s here: above zero while requests come, back to 0 once they stop.
        def rate() -> float:
            annotations = gw.cluster.get(f"{ADAPTERS}/bot")["metadata"].get("annotations") or {}
            return float(annotations.get(kn.ANNOTATION_REQUEST_RATE, "-1"))

        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                assert gw.chat(acme, "bot").status_code == 200

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            wait_until("a request rate on the Adapter", lambda: rate() > 0)
        finally:
            stop.set()
            sender.join(timeout=120)
        wait_until("the rate back to 0 without requests", lambda: rate() == 0)

    # Everything the gateway called is in its RBAC table (= the chart's role), and this
    # run used every grant.
    assert gw.standin.calls_by("lmaas-gateway") == API_CALLS
