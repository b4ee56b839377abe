"""The Kubernetes backend against the stand-in API server (kmock; `tests/k8s_standin.py`).

The stand-in stores objects and serves the real HTTP API, but runs no controllers: no Pods
appear for a Deployment, no EndpointSlice for a Service. Where a test needs a replica, it
plays those controllers itself, through the API as they would (`_Controller`): when a
Deployment is scaled above zero it starts a real ``lmaas runtime`` process and publishes
it in an EndpointSlice, marking it ready once the runtime's ``/readyz`` answers (the
kubelet's readiness probe); when the Deployment is scaled back to zero it stops the
process and empties the slice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmaas import kube_names as kn
from lmaas.config import Settings
from lmaas.gateway.activator.kube_api import KubeApi
from lmaas.gateway.activator.kubernetes import KubernetesBackend, deployment_model
from lmaas.gateway.routing import TenantRef
from tests.activator.conftest import (
    ADMIN_TOKEN,
    MODEL,
    QUESTION,
    Gateway,
    metric,
    runtime_requests,
    serve_gateway,
    wait_until,
)
from tests.conftest import free_port
from tests.k8s_standin import KubeStandIn

NAMESPACE = "tenant-acme"
SERVICE = "chat"
DEPLOYMENTS = "apps/v1/deployments"


def _deployment(
    name: str, *, planned: int | None, serverless: bool = True, replicas: int = 0, idle_s: int = 2
) -> dict[str, Any]:
    annotations = {
        kn.ANNOTATION_SERVERLESS: str(serverless).lower(),
        kn.ANNOTATION_IDLE_TIMEOUT: str(idle_s),
    }
    if planned is not None:
        annotations[kn.ANNOTATION_PLANNED_REPLICAS] = str(planned)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                kn.LABEL_MODEL_SERVICE: SERVICE,
                kn.LABEL_COMPONENT: "runtime",
                kn.LABEL_TENANT: "acme",
            },
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "runtime", "env": [{"name": kn.RUNTIME_MODEL_ENV, "value": MODEL}]}
                    ]
                }
            },
        },
    }


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE,
            "namespace": NAMESPACE,
            "labels": {kn.LABEL_MODEL_SERVICE: SERVICE, kn.LABEL_COMPONENT: "runtime"},
        },
        "spec": {"ports": [{"name": "http", "port": 8001}]},
    }


class Cluster:
    """The stand-in's objects, read and written over its HTTP API (as a controller would)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=10)

    @staticmethod
    def _path(key: str, namespace: str, name: str | None = None) -> str:
        group_version, plural = key.rsplit("/", 1)
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{root}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    def create(self, key: str, body: dict[str, Any]) -> None:
        r = self._http.post(self._path(key, body["metadata"]["namespace"]), json=body)
        assert r.status_code in (200, 201), r.text

    def get(self, key: str, namespace: str, name: str) -> dict[str, Any] | None:
        r = self._http.get(self._path(key, namespace, name))
        return None if r.status_code == 404 else r.json()

    def patch(self, key: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
        r = self._http.patch(
            self._path(key, namespace, name),
            json=changes,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text

    def close(self) -> None:
        self._http.close()


def _replicas(kube: Cluster, name: str) -> int:
    body = kube.get(DEPLOYMENTS, NAMESPACE, name)
    assert body is not None
    return int(body["spec"]["replicas"])


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Cluster]:
    with KubeStandIn(tmp_path) as standin:
        cluster = Cluster(standin.url)
        cluster.create(DEPLOYMENTS, _deployment("chat-a10g", planned=2))
        cluster.create(DEPLOYMENTS, _deployment("chat-l4", planned=None))
        cluster.create("v1/services", _service())
        yield cluster
        cluster.close()


def _settings(tmp_path: Path, kube: Cluster, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path / "gateway-home",
        "database_url": f"sqlite:///{tmp_path / 'gateway.db'}",
        "model_name": MODEL,
        "admin_token": ADMIN_TOKEN,
        "scale_backend": "kubernetes",
        "kube_api_url": kube.url,
        "activation_timeout_s": 180.0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


class _Controller:
    """Plays the Deployment controller, the kubelet and the EndpointSlice controller."""

    def __init__(self, kube: Cluster, home: Path, model_dir: Path) -> None:
        self.kube = kube
        self.home = home
        self.model_dir = model_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.stops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Controller:
        self.kube.create(
            "discovery.k8s.io/v1/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{SERVICE}-abcde",
                    "namespace": NAMESPACE,
                    "labels": {kn.LABEL_SERVICE_NAME: SERVICE},
                },
                "addressType": "IPv4",
                "endpoints": [],
                "ports": [],
            },
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._stop_runtime()

    def _publish(self, ready: bool | None) -> None:
        endpoints = (
            [] if ready is None else [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}]
        )
        ports = [] if ready is None else [{"name": "http", "port": self.port}]
        self.kube.patch(
            "discovery.k8s.io/v1/endpointslices",
            NAMESPACE,
            f"{SERVICE}-abcde",
            {"endpoints": endpoints, "ports": ports},
        )

    def _start_runtime(self) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
        env.update(
            LMAAS_HOME=str(self.home),
            LMAAS_BASE_MODEL=str(self.model_dir),
            LMAAS_MODEL_NAME=MODEL,
            LMAAS_RUNTIME_PORT=str(self.port),
        )
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "runtime.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lmaas", "runtime"], env=env, stdout=log, stderr=log
            )
        self.starts += 1
        self._publish(ready=False)

    def _stop_runtime(self) -> None:
        if self.process is not None:
            self._publish(ready=None)
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None
            self.stops += 1

    def _run(self) -> None:
        published_ready = False
        while not self._stop.wait(0.1):
            wanted = _replicas(self.kube, "chat-a10g") + _replicas(self.kube, "chat-l4")
            if wanted > 0 and self.process is None:
                self._start_runtime()
                published_ready = False
            elif wanted == 0 and self.process is not None:
                self._stop_runtime()
            if self.process is not None and not published_ready:
                try:
                    ok = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code
                except httpx.HTTPError:
                    ok = 0
                if ok == 200:
                    self._publish(ready=True)
                    published_ready = True


def test_a_held_request_scales_the_deployments_up_and_idle_scales_them_back_to_zero(
    kube: Cluster, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = _settings(tmp_path, kube)
    with (
        _Controller(kube, tmp_path / "pod-home", tiny_model_dir) as controller,
        serve_gateway(settings) as gw,
    ):
        headers = {"Authorization": f"Bearer {gw.tenant_key()}"}
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": 6, "temperature": 0}
        assert (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (0, 0)

        def post(_: int) -> httpx.Response:
            return httpx.post(
                f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=240
            )

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(post, range(3)))
            # While they are held: each Deployment went to its plan (at least 1).

        assert [r.status_code for r in answers] == [200, 200, 200], answers[0].text
        assert len({r.json()["choices"][0]["message"]["content"] for r in answers}) == 1
        assert (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (2, 1)
        assert controller.starts == 1
        assert runtime_requests(f"http://127.0.0.1:{controller.port}") == 3, "each sent once"
        text = gw.metrics()
        service = f"{NAMESPACE}/{SERVICE}"
        assert metric(text, "lmaas_activator_cold_starts_total", service=service) == 1
        assert (
            metric(text, "lmaas_activator_scale_events_total", service=service, direction="up") == 1
        )

        # Idle for the ModelService's own timeout (2 s, its annotation): back to zero.
        wait_until(
            lambda: (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (0, 0),
            30,
            "the Deployments to be scaled to zero",
        )
        wait_until(lambda: controller.stops == 1, 30, "the runtime to stop")
        assert metric(gw.metrics(), "lmaas_activator_scale_events_total", direction="down") == 1


def test_with_no_replica_coming_up_the_request_times_out_and_the_service_goes_back_to_zero(
    kube: Cluster, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, kube, activation_timeout_s=1.0)
    with serve_gateway(settings) as gw:
        headers = {"Authorization": f"Bearer {gw.tenant_key()}"}
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": 2}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["code"] == "activation_timeout"
        assert (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (2, 1)
        wait_until(
            lambda: (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (0, 0),
            30,
            "the idle Deployments to go back to zero",
        )


def test_a_model_no_service_serves_is_refused_with_503(kube: Cluster, tmp_path: Path) -> None:
    settings = _settings(tmp_path, kube, model_name="ghost")
    with serve_gateway(settings) as gw:
        headers = {"Authorization": f"Bearer {gw.tenant_key()}"}
        body = {"model": "ghost", "messages": QUESTION, "max_tokens": 2}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_served"
        assert "ghost" in r.json()["error"]["message"] and r.headers["Retry-After"]


async def test_the_backend_reads_the_plan_and_never_scales_a_non_serverless_service_down(
    kube: Cluster,
) -> None:
    kube.create(DEPLOYMENTS, _deployment("chat-h100", planned=3, serverless=False, replicas=3))
    backend = KubernetesBackend(KubeApi(kube.url), default_idle_timeout_s=99)
    acme = TenantRef("tnt-1", "acme")
    try:
        info = await backend.lookup(MODEL, acme)
        assert info is not None and info.key == f"{NAMESPACE}/{SERVICE}"
        assert info.tenant == "acme"
        assert info.scale_to_zero is False, "one Deployment is not serverless"
        assert info.idle_timeout_s == 2
        assert await backend.lookup("another-model", acme) is None
        assert await backend.lookup(MODEL) is None, "acme's service is not shared"
        shared = _deployment("pool-a10g", planned=1)
        shared["metadata"] = dict(shared["metadata"], namespace="zz-shared")
        shared["metadata"]["labels"] = {kn.LABEL_MODEL_SERVICE: "pool"}
        kube.create(DEPLOYMENTS, shared)
        backend.cache_ttl_s = 0
        pooled = await backend.lookup(MODEL)
        assert pooled is not None and pooled.key == "zz-shared/pool" and pooled.tenant is None
        assert (await backend.lookup(MODEL, acme)).key == info.key, "its own before shared"
        assert await backend.current_replicas(info) == 3
        assert await backend.scale_up(info) == 2 + 1 + 3
        await backend.scale_to_zero(info)
        assert [_replicas(kube, n) for n in ("chat-a10g", "chat-l4", "chat-h100")] == [0, 0, 3]
    finally:
        await backend.aclose()


def test_the_model_of_a_deployment_comes_from_its_label_first() -> None:
    body = _deployment("x", planned=1)
    assert deployment_model(body) == MODEL
    body["metadata"]["labels"][kn.LABEL_MODEL] = "labelled"
    assert deployment_model(body) == "labelled"
    body["metadata"]["labels"].pop(kn.LABEL_MODEL)
    body["spec"]["template"]["spec"]["containers"][0]["env"] = []
    assert deployment_model(body) is None


def test_endpoint_slices_give_non_terminating_addresses() -> None:
    from lmaas.gateway.activator.kubernetes import _slice_urls

    endpoint_slice = {
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8001}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"], "conditions": {"terminating": True}},
        ],
    }
    assert _slice_urls(endpoint_slice) == ["http://10.0.0.1:8001", "http://10.0.0.2:8001"]
    v6 = {
        "addressType": "IPv6",
        "ports": [{"port": 8001}],
        "endpoints": [{"addresses": ["fd00::1"]}],
    }
    assert _slice_urls(v6) == ["http://[fd00::1]:8001"]


@pytest.mark.redis
def test_a_gateway_never_scales_down_a_service_another_gateway_is_using(
    kube: Cluster, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix}
    quick = _settings(tmp_path / "a", kube, activation_timeout_s=0.5, **shared)
    patient = _settings(tmp_path / "b", kube, activation_timeout_s=8.0, **shared)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 2}
    with serve_gateway(quick) as a, serve_gateway(patient) as b:

        def post(gateway: Gateway) -> httpx.Response:
            headers = {"Authorization": f"Bearer {gateway.tenant_key()}"}
            return httpx.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=60
            )

        assert post(a).status_code == 503  # A wakes the service (no pod comes: no controller)
        assert (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (2, 1)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, b)  # B holds a request for 8 s
            # A alone finds the service idle 2 s after its own request; B's use keeps it up.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                assert (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (2, 1)
                time.sleep(0.1)
            assert held.result().status_code == 503
        wait_until(
            lambda: (_replicas(kube, "chat-a10g"), _replicas(kube, "chat-l4")) == (0, 0),
            30,
            "the service, idle everywhere, to go back to zero",
        )
