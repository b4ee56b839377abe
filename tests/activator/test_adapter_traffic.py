"""Adapter traffic and plans on Kubernetes, against the API stand-in.

`AdapterTraffic` turns the router's per-adapter counts into each Adapter's
``lmaas.io/request-rate`` (only when it moved) and reads where the operator placed each
adapter; with Redis several gateways add up their counts. `follow_plan` keeps a running
serverless service at its (re-planned) size and never touches a service at zero or one the
operator sizes. The end-to-end path through a gateway is in
``tests/gateway/test_kubernetes_routing.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmaas import kube_names as kn
from lmaas.gateway.activator.adapter_traffic import (
    AdapterTraffic,
    LocalAdapterCounts,
    RedisAdapterCounts,
)
from lmaas.gateway.activator.backend import ServiceInfo
from lmaas.gateway.activator.kube_api import KubeApi
from lmaas.gateway.activator.kubernetes import KubernetesBackend
from lmaas.gateway.routing import Replica, pick_replica
from lmaas_operator.crds import KINDS, crd_manifest
from tests.k8s_standin import KubeStandIn

NS = "tenant-acme"
ADAPTERS = f"/apis/lmaas.io/v1alpha1/namespaces/{NS}/adapters"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[KubeStandIn]:
    with KubeStandIn(tmp_path, [crd_manifest(k) for k in KINDS]) as server:
        yield server


@pytest.fixture
def http(standin: KubeStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.url, timeout=10) as client:
        yield client


def _merge(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    r = http.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text


def _adapter(
    http: httpx.Client,
    name: str,
    adapter_id: str | None,
    loaded_on: list[str],
    rate: str | None = None,
) -> None:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if rate is not None:
        meta["annotations"] = {kn.ANNOTATION_REQUEST_RATE: rate}
    body = {
        "apiVersion": "lmaas.io/v1alpha1",
        "kind": "Adapter",
        "metadata": meta,
        "spec": {"service": "chat", "source": "s3://x"},
    }
    assert http.post(ADAPTERS, json=body).status_code in (200, 201)
    if adapter_id is not None:
        _merge(
            http,
            f"{ADAPTERS}/{name}/status",
            {"status": {"adapterId": adapter_id, "loadedOn": loaded_on}},
        )


def _rate(http: httpx.Client, name: str) -> str | None:
    meta = http.get(f"{ADAPTERS}/{name}").json()["metadata"]
    return (meta.get("annotations") or {}).get(kn.ANNOTATION_REQUEST_RATE)


def test_pick_prefers_the_pods_an_adapter_was_placed_on() -> None:
    loaded = Replica("http://a", in_flight=0, adapter_ids={"x"})
    placed = Replica("http://b", in_flight=1, placed_adapters={"x"})
    other = Replica("http://c", in_flight=0)
    assert pick_replica([loaded, placed, other], "x") is placed, "placement before a hint"
    assert pick_replica([loaded, other], "x") is loaded, "no placement: who holds it"
    placed.in_flight = 9
    assert pick_replica([loaded, placed, other], "x") is loaded, "an overloaded pod yields"
    assert pick_replica([loaded, placed, other], None) in (loaded, other)


async def test_rates_are_written_only_when_they_move(
    standin: KubeStandIn, http: httpx.Client
) -> None:
    _adapter(http, "bot", "adp-1", ["chat-0", "chat-1"])
    _adapter(http, "old", "adp-2", ["chat-1"], rate="5")
    _adapter(http, "new", None, [])  # not registered yet: requests cannot name it
    counts: Counter[str] = Counter()
    api = KubeApi(standin.url)
    traffic = AdapterTraffic(api, LocalAdapterCounts(counts), period_s=10)
    try:
        await traffic.tick(now=0.0)  # the first period only starts the clock
        assert traffic.placed_on(NS, "chat-1") == {"adp-1", "adp-2"}
        assert traffic.placed_on(NS, "chat-0") == {"adp-1"}
        assert traffic.placed_on("tenant-beta", "chat-0") == set()
        assert _rate(http, "bot") is None and _rate(http, "old") == "5"

        counts.update({"adp-1": 20, "adp-2": 48})
        await traffic.tick(now=10.0)
        assert _rate(http, "bot") == "2", "20 requests in 10 s"
        assert _rate(http, "old") == "5", "4.8 req/s is within 25% of 5: unchanged"
        assert _rate(http, "new") is None

        counts.update({"adp-1": 21})
        await traffic.tick(now=20.0)
        assert _rate(http, "bot") == "2", "2.1 req/s: a wobble, not written"

        await traffic.tick(now=30.0)
        assert (_rate(http, "bot"), _rate(http, "old")) == ("0", "0"), "no requests: 0"
        patches = [c for c in standin.emulator.calls if c.rule == ("patch", "lmaas.io", "adapters")]
        assert len(patches) == 3, "each change written once, nothing else"
    finally:
        await traffic.aclose()
        await api.aclose()


@pytest.mark.redis
async def test_gateways_sharing_redis_report_the_sum_of_their_traffic(
    standin: KubeStandIn, http: httpx.Client, redis_url: str, redis_prefix: str
) -> None:
    _adapter(http, "bot", "adp-1", ["chat-0"])
    mine: Counter[str] = Counter()
    theirs: Counter[str] = Counter()
    gateways = [
        AdapterTraffic(
            KubeApi(standin.url),
            RedisAdapterCounts(counts, redis_url, prefix=redis_prefix),
            period_s=10,
        )
        for counts in (mine, theirs)
    ]
    try:
        # Steady traffic: 10 + 30 requests every 10 s. Each gateway adds its counts at its
        # own tick, so the writer sees the others' counts one period late: from the second
        # period on, the sum.
        for period in range(4):
            for gateway in gateways:
                await gateway.tick(now=10.0 * period)
            mine["adp-1"] += 10
            theirs["adp-1"] += 30
        assert _rate(http, "bot") == "4", "(10 + 30) requests in 10 s, over both gateways"
        # One gateway writes per period (a lock in Redis), the same one while it lives.
        assert [await g.counts.may_write(20.0) for g in gateways] == [True, False]
    finally:
        for gateway in gateways:
            await gateway.aclose()
            await gateway.api.aclose()


def _deployment(
    http: httpx.Client, name: str, *, planned: int, replicas: int, serverless: bool
) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {kn.LABEL_MODEL_SERVICE: "chat", kn.LABEL_MODEL: "m"},
            "annotations": {
                kn.ANNOTATION_PLANNED_REPLICAS: str(planned),
                kn.ANNOTATION_SERVERLESS: str(serverless).lower(),
            },
        },
        "spec": {"replicas": replicas},
    }
    assert http.post(DEPLOYMENTS, json=body).status_code in (200, 201)


def _replicas(http: httpx.Client, name: str) -> int:
    return int(http.get(f"{DEPLOYMENTS}/{name}").json()["spec"]["replicas"])


async def test_a_running_service_follows_its_plan_a_stopped_one_stays_stopped(
    standin: KubeStandIn, http: httpx.Client
) -> None:
    _deployment(http, "chat-l4", planned=3, replicas=1, serverless=True)
    _deployment(http, "chat-a100", planned=2, replicas=0, serverless=True)  # new in the plan
    _deployment(http, "chat-h100", planned=4, replicas=1, serverless=False)  # the operator's
    backend = KubernetesBackend(KubeApi(standin.url))
    service = ServiceInfo(key=f"{NS}/chat", model="m", scale_to_zero=True, idle_timeout_s=60)
    try:
        assert await backend.follow_plan(service) == (2, 6)
        assert [_replicas(http, n) for n in ("chat-l4", "chat-a100", "chat-h100")] == [3, 2, 1]
        _merge(
            http,
            f"{DEPLOYMENTS}/chat-l4",
            {"metadata": {"annotations": {kn.ANNOTATION_PLANNED_REPLICAS: "1"}}},
        )
        assert await backend.follow_plan(service) == (6, 4), "down to a smaller plan"
        assert await backend.follow_plan(service) == (4, 4), "at its plan: nothing to do"
        await backend.scale_to_zero(service)
        assert [_replicas(http, n) for n in ("chat-l4", "chat-a100", "chat-h100")] == [0, 0, 1]
        assert await backend.follow_plan(service) == (1, 1), "scaled to zero: stays there"
        assert [_replicas(http, n) for n in ("chat-l4", "chat-a100")] == [0, 0]
    finally:
        await backend.aclose()
