"""Label and annotation names shared by the operator and the gateway's activator.

The operator puts these on each ModelService's Deployments (and their pods and Service);
the activator finds a service's Deployments by them, reads how far to scale them on
activation and whether it may scale them to zero. One definition, imported by both sides
(neither imports the other's package).
"""

from __future__ import annotations

__all__ = [
    "ANNOTATION_IDLE_TIMEOUT",
    "ANNOTATION_PLANNED_REPLICAS",
    "ANNOTATION_SERVERLESS",
    "LABEL_COMPONENT",
    "LABEL_GPU_TYPE",
    "LABEL_MODEL",
    "LABEL_MODEL_SERVICE",
    "LABEL_SERVICE_NAME",
    "LABEL_TENANT",
    "PREFIX",
    "RUNTIME_MODEL_ENV",
]

PREFIX = "lmaas.io"

LABEL_COMPONENT = "app.kubernetes.io/component"
"""`runtime` on a ModelService's Deployments, pods and Service."""
LABEL_MODEL_SERVICE = f"{PREFIX}/model-service"
"""The ModelService a Deployment, pod or Service belongs to (its name, in its namespace)."""
LABEL_MODEL = f"{PREFIX}/model"
"""The served model name (the Model's name) on a ModelService's Deployments. Optional: when
absent the activator reads `RUNTIME_MODEL_ENV` from the runtime container instead."""
LABEL_GPU_TYPE = f"{PREFIX}/gpu-type"
"""The GPUType of a Deployment (one Deployment per GPU type of a service)."""
LABEL_TENANT = f"{PREFIX}/tenant"
"""The tenant owning a namespaced object, when it has one."""
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
"""Set by Kubernetes on each EndpointSlice: the name of its Service."""

ANNOTATION_PLANNED_REPLICAS = f"{PREFIX}/planned-replicas"
"""On a Deployment: the replicas the plan wants while the service is active."""
ANNOTATION_SERVERLESS = f"{PREFIX}/serverless"
"""On a Deployment: ``"true"`` when its service may scale to zero (minReplicas 0)."""
ANNOTATION_IDLE_TIMEOUT = f"{PREFIX}/idle-timeout-seconds"
"""On a Deployment: seconds without requests after which a serverless service scales to 0."""

RUNTIME_MODEL_ENV = "LMAAS_MODEL_NAME"
"""The runtime container's environment variable naming the model it serves."""
