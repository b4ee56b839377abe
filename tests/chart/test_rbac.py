"""The chart's ClusterRoles grant exactly the Kubernetes calls the code makes.

The tables are kept next to the code that calls (`lmaas_operator.rbac`,
`lmaas.gateway.activator.kube_api.API_CALLS`); the lifecycle tests check the calls the
operator and the gateway really make against the stand-in with the same tables
(`tests/operator/test_lifecycle.py`, `tests/activator/test_adapter_traffic.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmaas.gateway.activator.kube_api import API_CALLS as GATEWAY_CALLS
from lmaas_operator.rbac import all_calls
from tests.chart.test_chart import by_kind, render


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(verb, API group, resource) of every rule of a ClusterRole, expanded."""
    found: set[tuple[str, str, str]] = set()
    for rule in role["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found |= {(verb, group, resource) for verb in rule["verbs"]}
    return found


def test_the_gateway_role_grants_exactly_what_the_gateway_calls(helm: Path) -> None:
    roles = by_kind(render(helm), "ClusterRole")
    granted = grants(roles["r1-lmaas-gateway"])
    assert granted - GATEWAY_CALLS == set(), "granted but never called"
    assert GATEWAY_CALLS - granted == set(), "called but not granted"


def test_the_operator_role_grants_exactly_what_the_operator_and_kopf_call(helm: Path) -> None:
    roles = by_kind(render(helm), "ClusterRole")
    granted = grants(roles["r1-lmaas-operator"])
    assert granted - all_calls() == set(), "granted but never called"
    assert all_calls() - granted == set(), "called but not granted"


def test_neither_role_may_read_secrets_it_does_not_write(helm: Path) -> None:
    roles = by_kind(render(helm), "ClusterRole")
    assert not any(r == "secrets" for _, _, r in grants(roles["r1-lmaas-gateway"]))
    secrets = {v for v, _, r in grants(roles["r1-lmaas-operator"]) if r == "secrets"}
    assert secrets == {"get", "create"}, "no list (every tenant's key), no update"
