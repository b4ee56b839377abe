"""Where an adapter is loaded: k replicas chosen by its traffic, by rendezvous hashing.

An adapter is not loaded on every runtime pod: it is kept on k of them, k growing with
its request rate. Which k is decided by rendezvous (highest-random-weight) hashing over
the pod names, so every operator picks the same pods and a pod coming or going moves
only the adapters that must move. Pods are asked to load and unload it through the
runtime's internal API (`lmaas.protocol`) with an injectable httpx client.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import httpx

from lmaas.protocol import LoadAdapterRequest
from lmaas_operator.resources import AdapterPlacement

__all__ = [
    "RuntimeAdapterClient",
    "RuntimeCallError",
    "choose_replicas",
    "pod_base_url",
    "ready_pods",
    "rendezvous",
]


def choose_replicas(
    rate: float, placement: AdapterPlacement, default_per_replica: float, num_pods: int
) -> int:
    """k: enough replicas for `rate` requests/s, within the placement's bounds and the pods."""
    per_replica = placement.requests_per_replica or default_per_replica
    k = max(placement.min_replicas, math.ceil(max(rate, 0.0) / per_replica))
    if placement.max_replicas is not None:
        k = min(k, placement.max_replicas)
    return max(0, min(k, num_pods))


def _weight(key: str, node: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}\0{node}".encode()).digest()[:8], "big")


def rendezvous(key: str, nodes: Iterable[str], k: int) -> list[str]:
    """The `k` nodes with the highest hash weight for `key` (stable under node churn)."""
    ranked = sorted(set(nodes), key=lambda node: (_weight(key, node), node), reverse=True)
    return sorted(ranked[:k])


def ready_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods that are running, have an IP, are Ready and are not being deleted."""
    result = []
    for pod in pods:
        status = pod.get("status") or {}
        if pod["metadata"].get("deletionTimestamp") or not status.get("podIP"):
            continue
        if status.get("phase") != "Running":
            continue
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if conditions.get("Ready") == "True":
            result.append(pod)
    return result


def pod_base_url(pod: dict[str, Any], default_port: int) -> str:
    """http://<pod IP>:<the runtime container's `http` port>."""
    port = default_port
    for container in pod.get("spec", {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == "http":
                port = int(p["containerPort"])
    return f"http://{pod['status']['podIP']}:{port}"


class RuntimeCallError(Exception):
    """A runtime pod did not load or unload an adapter."""


class RuntimeAdapterClient:
    """Calls `POST /internal/adapters` and `DELETE /internal/adapters/{id}` on runtime pods."""

    def __init__(self, http: httpx.Client | None = None, *, timeout: float = 30.0) -> None:
        self.http = http or httpx.Client(timeout=timeout)

    def load(self, base_url: str, request: LoadAdapterRequest) -> None:
        try:
            response = self.http.post(
                f"{base_url}/internal/adapters", json=request.model_dump(mode="json")
            )
        except httpx.HTTPError as exc:
            raise RuntimeCallError(f"{base_url}: {exc}") from exc
        if not response.is_success:
            raise RuntimeCallError(
                f"{base_url} answered {response.status_code}: {response.text[:300]}"
            )

    def unload(self, base_url: str, adapter_id: str) -> None:
        try:
            response = self.http.delete(f"{base_url}/internal/adapters/{adapter_id}")
        except httpx.HTTPError as exc:
            raise RuntimeCallError(f"{base_url}: {exc}") from exc
        if not response.is_success and response.status_code != 404:
            raise RuntimeCallError(
                f"{base_url} answered {response.status_code}: {response.text[:300]}"
            )

    def close(self) -> None:
        self.http.close()
