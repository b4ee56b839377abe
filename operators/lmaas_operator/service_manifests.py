"""Pure builders of a ModelService's objects: one Deployment per GPU type, a Service, a PDB.

A serverless service (minReplicas 0) gets its Deployments at zero replicas and annotated
with the plan, so the gateway's activator knows how far to scale them when requests
arrive; the operator then leaves `spec.replicas` of those Deployments to the activator.
Each Deployment (and its pods) carries the served model's name (``lmaas.io/model``), by
which the activator finds the services of a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmaas_operator import naming as n
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec, Toleration
from lmaas_operator.settings import OperatorSettings

__all__ = [
    "ReplicaGroup",
    "deployment",
    "pod_disruption_budget",
    "replica_groups",
    "runtime_service",
    "service_endpoint",
    "service_labels",
]


@dataclass(frozen=True)
class ReplicaGroup:
    """The replicas of one GPU type on one kind of capacity: one Deployment."""

    gpu_type: str
    spot: bool
    planned: int

    def name(self, service: str) -> str:
        return n.deployment_name(service, self.gpu_type, spot=self.spot)


def replica_groups(counts: dict[str, int], spot_counts: dict[str, int]) -> list[ReplicaGroup]:
    """One group per GPU type with replicas, on-demand then spot, in name order."""
    groups = [ReplicaGroup(t, False, c) for t, c in sorted(counts.items()) if c > 0]
    groups += [ReplicaGroup(t, True, c) for t, c in sorted(spot_counts.items()) if c > 0]
    return groups


def service_labels(service: str, tenant: str | None) -> dict[str, str]:
    """Labels every object and pod of a ModelService carries (the activator selects by them)."""
    labels = {
        n.LABEL_PART_OF: "lmaas",
        n.LABEL_MANAGED_BY: n.MANAGED_BY,
        n.LABEL_COMPONENT: "runtime",
        n.LABEL_MODEL_SERVICE: service,
    }
    if tenant:
        labels[n.LABEL_TENANT] = tenant
    return labels


def _tolerations(tolerations: list[Toleration]) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations]


def _env(
    spec: ModelServiceSpec,
    model_name: str,
    model: ModelSpec,
    port: int,
    extra: dict[str, str],
    resource_name: str,
) -> list[dict[str, str]]:
    env = dict(extra) | {
        "LMAAS_RUNTIME_HOST": "0.0.0.0",
        "LMAAS_RUNTIME_PORT": str(port),
        "LMAAS_BASE_MODEL": model.source,
        "LMAAS_MODEL_NAME": model_name,
        "LMAAS_DEVICE": "cuda" if resource_name else "cpu",
        "LMAAS_HOME": "/var/lib/lmaas",
        # The runtime's policy grammar (lmaas.engine.speculation.policy): off, fixed:k,
        # smartspec; numSpeculativeTokens is fixed's k and every policy's bound.
        "LMAAS_SPECULATION": (
            f"fixed:{spec.speculation.num_speculative_tokens}"
            if spec.speculation.policy == "fixed"
            else spec.speculation.policy
        ),
        "LMAAS_SPECULATION_MAX_K": str(spec.speculation.num_speculative_tokens),
    }
    env.update(spec.runtime.env)
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def deployment(
    *,
    service: str,
    namespace: str,
    tenant: str | None,
    spec: ModelServiceSpec,
    model_name: str,
    model: ModelSpec,
    gpu: GPUTypeSpec,
    group: ReplicaGroup,
    settings: OperatorSettings,
    owner: dict[str, Any],
) -> dict[str, Any]:
    """The Deployment of one replica group: runtime pods on nodes of its GPU type."""
    serverless = spec.scaling.min_replicas == 0
    labels = service_labels(service, tenant) | {
        n.LABEL_GPU_TYPE: group.gpu_type,
        n.LABEL_CAPACITY: "spot" if group.spot else "on-demand",
    }
    if n.is_label_value(model_name):  # else the activator reads the container's env
        labels[n.LABEL_MODEL] = model_name
    node_selector = dict(gpu.node_selector)
    tolerations = list(gpu.tolerations)
    if group.spot and gpu.spot is not None:
        node_selector.update(gpu.spot.node_selector)
        tolerations += gpu.spot.tolerations
    gpus = str(gpu.gpus_per_replica)
    port = settings.runtime_port
    container: dict[str, Any] = {
        "name": "runtime",
        "image": spec.runtime.image or settings.runtime_image,
        "command": ["lmaas", "runtime"],
        "env": _env(spec, model_name, model, port, settings.runtime_env, gpu.resource_name),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": spec.runtime.cpu, "memory": spec.runtime.memory},
            "limits": {"memory": spec.runtime.memory},
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "home", "mountPath": "/var/lib/lmaas"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if gpu.resource_name:
        container["resources"]["requests"][gpu.resource_name] = gpus
        container["resources"]["limits"][gpu.resource_name] = gpus
    planned = group.planned
    annotations = {
        n.ANNOTATION_PLANNED_REPLICAS: str(planned),
        n.ANNOTATION_SERVERLESS: "true" if serverless else "false",
        n.ANNOTATION_IDLE_TIMEOUT: str(spec.scaling.idle_timeout_seconds),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": group.name(service),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": 0 if serverless else planned,
            "selector": {"matchLabels": {k: labels[k] for k in _SELECTOR_KEYS}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": n.TENANT_SERVICE_ACCOUNT if tenant else "default",
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": node_selector,
                    "tolerations": _tolerations(tolerations),
                    "containers": [container],
                    "volumes": [
                        {"name": "home", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


_SELECTOR_KEYS = (n.LABEL_MODEL_SERVICE, n.LABEL_GPU_TYPE, n.LABEL_CAPACITY)


def runtime_service(
    *, service: str, namespace: str, tenant: str | None, port: int, owner: dict[str, Any]
) -> dict[str, Any]:
    """The Service over every replica of a ModelService (all GPU types)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": n.dns_label(service),
            "namespace": namespace,
            "labels": service_labels(service, tenant),
            "ownerReferences": [owner],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {n.LABEL_MODEL_SERVICE: service, n.LABEL_COMPONENT: "runtime"},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_endpoint(service: str, namespace: str, port: int) -> str:
    return f"http://{n.dns_label(service)}.{namespace}.svc:{port}"


def pod_disruption_budget(
    *, service: str, namespace: str, tenant: str | None, owner: dict[str, Any]
) -> dict[str, Any]:
    """At most one runtime replica of the service is evicted at a time (node drains)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": n.dns_label(service),
            "namespace": namespace,
            "labels": service_labels(service, tenant),
            "ownerReferences": [owner],
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": {
                "matchLabels": {n.LABEL_MODEL_SERVICE: service, n.LABEL_COMPONENT: "runtime"}
            },
        },
    }
