"""Deterministic names, labels and hashes of everything the operator creates.

Children are named from their parent's name so that a retry, a restart or a second
operator finds what the first one made. Label and annotation names come from
`lmaas.kube_names` (re-exported here): they are the contract with the gateway, which finds
and scales a ModelService's Deployments and feeds each Adapter's request rate by them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from lmaas.kube_names import (
    ANNOTATION_IDLE_TIMEOUT,
    ANNOTATION_PLANNED_REPLICAS,
    ANNOTATION_REQUEST_RATE,
    ANNOTATION_SERVERLESS,
    ANNOTATION_SPEC_HASH,
    LABEL_CAPACITY,
    LABEL_COMPONENT,
    LABEL_FINETUNE_JOB,
    LABEL_GPU_TYPE,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_MODEL_SERVICE,
    LABEL_PART_OF,
    LABEL_TENANT,
    PREFIX,
    is_label_value,
)

__all__ = [
    "ANNOTATION_IDLE_TIMEOUT",
    "ANNOTATION_PLANNED_REPLICAS",
    "ANNOTATION_REQUEST_RATE",
    "ANNOTATION_SERVERLESS",
    "ANNOTATION_SPEC_HASH",
    "API_KEY_SECRET",
    "FINALIZER",
    "LABEL_CAPACITY",
    "LABEL_COMPONENT",
    "LABEL_FINETUNE_JOB",
    "LABEL_GPU_TYPE",
    "LABEL_MANAGED_BY",
    "LABEL_MODEL",
    "LABEL_MODEL_SERVICE",
    "LABEL_PART_OF",
    "LABEL_TENANT",
    "MANAGED_BY",
    "PREFIX",
    "TENANT_SERVICE_ACCOUNT",
    "canonical_hash",
    "deployment_name",
    "dns_label",
    "is_label_value",
    "tenant_namespace",
]

FINALIZER = f"{PREFIX}/finalizer"
MANAGED_BY = "lmaas-operator"

API_KEY_SECRET = "lmaas-api-key"
TENANT_SERVICE_ACCOUNT = "lmaas-tenant"

_INVALID = re.compile(r"[^a-z0-9-]+")


def canonical_hash(value: Any) -> str:
    """SHA-256 (16 hex) of the canonical JSON of `value`: the same data, the same hash."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dns_label(*parts: str, max_length: int = 63) -> str:
    """A DNS-1035 label (Service names) from `parts`, hashed-shortened when too long."""
    raw = "-".join(p for p in parts if p)
    name = _INVALID.sub("-", raw.lower()).strip("-") or "x"
    if not name[0].isalpha():
        name = "x" + name
    if len(name) > max_length:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = name[: max_length - 9].rstrip("-") + "-" + digest
    return name


def deployment_name(service: str, gpu_type: str, *, spot: bool) -> str:
    """Name of the Deployment of one GPU type (and capacity) of a ModelService.

    Kept to 47 characters so pod names (Deployment + ReplicaSet hash + pod suffix) stay
    within 63.
    """
    return dns_label(service, gpu_type, "spot" if spot else "", max_length=47)


def tenant_namespace(tenant: str, override: str | None = None) -> str:
    """The tenant's namespace: the spec's choice, or `tenant-<name>`."""
    return override or dns_label("tenant", tenant)
