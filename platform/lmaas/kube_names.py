"""Label and annotation names shared by the operator and the gateway.

The operator puts these on each ModelService's Deployments (and their pods and Service)
and on Adapters; the gateway's activator finds a service's Deployments by them, reads how
far to scale them on activation and whether it may scale them to zero, and writes each
Adapter's request rate. One definition, imported by both sides (neither imports the
other's package); `lmaas_operator.naming` re-exports them beside its own names.
"""

from __future__ import annotations

import re

__all__ = [
    "ANNOTATION_IDLE_TIMEOUT",
    "ANNOTATION_PLANNED_REPLICAS",
    "ANNOTATION_REQUEST_RATE",
    "ANNOTATION_SERVERLESS",
    "ANNOTATION_SPEC_HASH",
    "LABEL_CAPACITY",
    "LABEL_COMPONENT",
    "LABEL_FINETUNE_JOB",
    "LABEL_GPU_TYPE",
    "LABEL_MANAGED_BY",
    "LABEL_MODEL",
    "LABEL_MODEL_SERVICE",
    "LABEL_PART_OF",
    "LABEL_SERVICE_NAME",
    "LABEL_TENANT",
    "PREFIX",
    "RUNTIME_MODEL_ENV",
    "is_label_value",
]

PREFIX = "lmaas.io"

LABEL_PART_OF = "app.kubernetes.io/part-of"
"""`lmaas` on everything the platform creates."""
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
"""`lmaas-operator` on what the operator creates."""
LABEL_COMPONENT = "app.kubernetes.io/component"
"""`runtime` on a ModelService's Deployments, pods and Service."""
LABEL_MODEL_SERVICE = f"{PREFIX}/model-service"
"""The ModelService a Deployment, pod or Service belongs to (its name, in its namespace)."""
LABEL_MODEL = f"{PREFIX}/model"
"""The served model name (the Model's name) on a ModelService's Deployments and pods. Absent
when the name is not a valid label value (over 63 characters): the activator then reads
`RUNTIME_MODEL_ENV` from the runtime container instead."""
LABEL_GPU_TYPE = f"{PREFIX}/gpu-type"
"""The GPUType of a Deployment (one Deployment per GPU type of a service)."""
LABEL_CAPACITY = f"{PREFIX}/capacity"
"""`on-demand` or `spot`: the capacity a Deployment's pods run on."""
LABEL_TENANT = f"{PREFIX}/tenant"
"""The tenant (its name) owning a namespace and what runs in it; absent = shared."""
LABEL_FINETUNE_JOB = f"{PREFIX}/fine-tune-job"
"""On an Adapter created by a FineTuneJob: the job's name."""
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
"""Set by Kubernetes on each EndpointSlice: the name of its Service."""

ANNOTATION_PLANNED_REPLICAS = f"{PREFIX}/planned-replicas"
"""On a Deployment: the replicas the plan wants while the service is active."""
ANNOTATION_SERVERLESS = f"{PREFIX}/serverless"
"""On a Deployment: ``"true"`` when its service may scale to zero (minReplicas 0)."""
ANNOTATION_IDLE_TIMEOUT = f"{PREFIX}/idle-timeout-seconds"
"""On a Deployment: seconds without requests after which a serverless service scales to 0."""
ANNOTATION_REQUEST_RATE = f"{PREFIX}/request-rate"
"""On an Adapter: requests per second the gateways route to it (written by the gateway,
read by the operator, which loads the adapter on more replicas as it grows)."""
ANNOTATION_SPEC_HASH = f"{PREFIX}/spec-hash"
"""On an object the operator made: the hash of the spec it was built from."""

RUNTIME_MODEL_ENV = "LMAAS_MODEL_NAME"
"""The runtime container's environment variable naming the model it serves."""

_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def is_label_value(value: str) -> bool:
    """Whether `value` may be a Kubernetes label value (≤ 63 characters, alphanumeric ends)."""
    return _LABEL_VALUE.fullmatch(value) is not None
