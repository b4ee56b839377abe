"""Adapter placement: k grows with traffic; rendezvous hashing moves little on churn;
the runtime client speaks the protocol (through httpx's transport seam)."""

from __future__ import annotations

import json

import httpx
import pytest

from lmaas.protocol import LoadAdapterRequest
from lmaas_operator.adapter_placement import (
    RuntimeAdapterClient,
    RuntimeCallError,
    choose_replicas,
    pod_base_url,
    ready_pods,
    rendezvous,
)
from lmaas_operator.resources import AdapterPlacement

PODS = [f"chat-a100-7d9f-{i:05d}" for i in range(10)]


def test_k_follows_the_request_rate_within_bounds() -> None:
    placement = AdapterPlacement()
    assert choose_replicas(0.0, placement, 2.0, 10) == 1  # minReplicas
    assert choose_replicas(5.0, placement, 2.0, 10) == 3  # ceil(5 / 2)
    assert choose_replicas(100.0, placement, 2.0, 10) == 10  # no more than the pods
    assert choose_replicas(100.0, AdapterPlacement(max_replicas=4), 2.0, 10) == 4
    assert choose_replicas(9.0, AdapterPlacement(requests_per_replica=3.0), 2.0, 10) == 3
    assert choose_replicas(5.0, placement, 2.0, 0) == 0


def test_rendezvous_is_deterministic_and_spreads_adapters() -> None:
    chosen = rendezvous("adp-1", PODS, 3)
    assert chosen == rendezvous("adp-1", list(reversed(PODS)), 3)
    assert len(chosen) == 3 and set(chosen) <= set(PODS)
    firsts = {rendezvous(f"adp-{i}", PODS, 1)[0] for i in range(50)}
    assert len(firsts) >= 6  # adapters are not all piled on one pod


def test_rendezvous_moves_only_what_must_move() -> None:
    moved = 0
    for i in range(200):
        before = set(rendezvous(f"adp-{i}", PODS, 2))
        after = set(rendezvous(f"adp-{i}", PODS[:-1], 2))  # one pod gone
        moved += len(before - after)
        if PODS[-1] not in before:
            assert before == after
    assert moved <= 200 * 2 // len(PODS) * 2  # about k/n of the placements move


def test_growing_k_keeps_the_existing_replicas() -> None:
    assert set(rendezvous("adp-x", PODS, 2)) <= set(rendezvous("adp-x", PODS, 4))


def _pod(name: str, ip: str | None, ready: bool = True, port: int = 8001) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_only_ready_pods_with_an_ip_count() -> None:
    pods = [_pod("a", "10.0.0.1"), _pod("b", None), _pod("c", "10.0.0.3", ready=False)]
    deleting = _pod("d", "10.0.0.4")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert [p["metadata"]["name"] for p in ready_pods([*pods, deleting])] == ["a"]
    assert pod_base_url(_pod("a", "10.0.0.1", port=9000), 8001) == "http://10.0.0.1:9000"


def test_runtime_client_posts_the_protocol_message() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "10.0.0.9":
            return httpx.Response(507, text="adapter bank full")
        return httpx.Response(200, json={"adapter_id": "adp-1", "rank": 8, "location": "device"})

    client = RuntimeAdapterClient(httpx.Client(transport=httpx.MockTransport(handler)))
    client.load("http://10.0.0.1:8001", LoadAdapterRequest(adapter_id="adp-1", uri="s3://a"))
    assert seen[0].method == "POST" and seen[0].url.path == "/internal/adapters"
    assert LoadAdapterRequest.model_validate(json.loads(seen[0].content)).uri == "s3://a"
    with pytest.raises(RuntimeCallError, match="507"):
        client.load("http://10.0.0.9:8001", LoadAdapterRequest(adapter_id="adp-1", uri="s3://a"))
    client.unload("http://10.0.0.1:8001", "adp-1")
    assert seen[-1].method == "DELETE" and seen[-1].url.path == "/internal/adapters/adp-1"
