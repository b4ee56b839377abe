"""Fixtures of the operator tests: the Kubernetes stand-in with lmaas's CRDs, a client, and
the environment of an operator run against it (`env`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmaas_operator.crds import KINDS, crd_manifest
from lmaas_operator.kube import KubeClient
from tests.k8s_standin import KubeStandIn


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[KubeStandIn]:
    """A fresh Kubernetes API stand-in serving lmaas's custom resources."""
    with KubeStandIn(tmp_path, [crd_manifest(k) for k in KINDS]) as server:
        yield server


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, standin: KubeStandIn, database_url: str, tmp_path: Path
) -> dict[str, str]:
    queue = f"lmaas-test-finetune-{uuid.uuid4().hex[:8]}"
    values = {
        "KUBECONFIG": str(standin.kubeconfig),
        "LMAAS_DATABASE_URL": database_url,
        "LMAAS_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "LMAAS_OPERATOR_WATCH_TIMEOUT_S": "5",
        "LMAAS_OPERATOR_RESYNC_INTERVAL_S": "1",
        "LMAAS_OPERATOR_FINETUNE_POLL_S": "0.5",
        "LMAAS_TASK_QUEUE": queue,
        "LMAAS_OPERATOR_PLATFORM_NAMESPACE": "lmaas-system",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def kube(standin: KubeStandIn) -> Iterator[KubeClient]:
    client = KubeClient(httpx.Client(base_url=standin.url, timeout=10))
    yield client
    client.close()
