"""Fixtures of the operator tests: the Kubernetes stand-in with lmaas's CRDs, a client."""

from __future__ import annotations

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
def kube(standin: KubeStandIn) -> Iterator[KubeClient]:
    client = KubeClient(httpx.Client(base_url=standin.url, timeout=10))
    yield client
    client.close()
