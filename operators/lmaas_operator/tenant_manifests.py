"""Pure builders of a tenant's Kubernetes objects: namespace, quota, network policy, ….

Each function takes plain values and returns a manifest dict; nothing here talks to an
API, so every builder is unit-tested on its output.
"""

from __future__ import annotations

import base64
from typing import Any

from lmaas_operator import naming as n
from lmaas_operator.resources import TenantSpec

__all__ = [
    "api_key_secret",
    "network_policy",
    "owner_reference",
    "parse_selector",
    "resource_quota",
    "service_account",
    "tenant_labels",
    "tenant_namespace_manifest",
]


def owner_reference(body: dict[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference to the custom resource `body` (garbage collection of children)."""
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def tenant_labels(tenant: str) -> dict[str, str]:
    return {
        n.LABEL_PART_OF: "lmaas",
        n.LABEL_MANAGED_BY: n.MANAGED_BY,
        n.LABEL_TENANT: tenant,
    }


def _meta(name: str, tenant: str, owner: dict[str, Any], namespace: str | None = None):
    meta: dict[str, Any] = {
        "name": name,
        "labels": tenant_labels(tenant),
        "ownerReferences": [owner],
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def tenant_namespace_manifest(tenant: str, namespace: str, owner: dict[str, Any]):
    """The tenant's Namespace, labelled so the operator and gateway can find its tenant."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace, tenant, owner)}


def resource_quota(tenant: str, namespace: str, spec: TenantSpec, owner: dict[str, Any]):
    """Caps on what the tenant's namespace may request (pods, CPU, memory, GPUs)."""
    quotas = spec.quotas
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta("lmaas-quota", tenant, owner, namespace),
        "spec": {
            "hard": {
                "pods": str(quotas.pods),
                "requests.cpu": quotas.cpu,
                "requests.memory": quotas.memory,
                "requests.nvidia.com/gpu": str(quotas.gpus),
            }
        },
    }


def parse_selector(selector: str) -> dict[str, str]:
    """`k=v,k2=v2` → {k: v, k2: v2} (the settings' label selectors)."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"label selector part {part!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def network_policy(
    tenant: str,
    namespace: str,
    spec: TenantSpec,
    owner: dict[str, Any],
    *,
    platform_namespace: str,
) -> dict[str, Any]:
    """Isolation: the tenant's pods talk to each other, the platform's pods and DNS only.

    Ingress comes from the namespace itself and from lmaas's own pods in the platform
    namespace (the gateway routes requests, the operator loads adapters). Egress goes to
    the namespace itself, to the platform's pods, to cluster DNS, and to the CIDRs the
    spec lists (e.g. where the weights are stored).
    """
    platform = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": platform_namespace}},
        "podSelector": {"matchLabels": {n.LABEL_PART_OF: "lmaas"}},
    }
    own = {"podSelector": {}}
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    egress: list[dict[str, Any]] = [{"to": [own, platform]}, dns]
    if spec.egress_cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in spec.egress_cidrs]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("lmaas-tenant-isolation", tenant, owner, namespace),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [own, platform]}],
            "egress": egress,
        },
    }


def service_account(tenant: str, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    """The account the tenant's runtime pods run as: no API token, no permissions."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(n.TENANT_SERVICE_ACCOUNT, tenant, owner, namespace),
        "automountServiceAccountToken": False,
    }


def api_key_secret(
    tenant: str, namespace: str, api_key: str, owner: dict[str, Any]
) -> dict[str, Any]:
    """The Secret holding the tenant's first API key (the only copy of its plaintext)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(n.API_KEY_SECRET, tenant, owner, namespace),
        "data": {"api-key": base64.b64encode(api_key.encode()).decode()},
    }
