"""Every Kubernetes API call the operator makes, as RBAC sees it: (verb, API group, resource).

The chart's operator ClusterRole grants exactly the union of these two tables (a test
renders it and compares), and the lifecycle tests record what the operator really calls
against the API stand-in (its requests carry the user agent ``lmaas-operator/<version>``,
kopf's ``kopf/<version>``) and compare that with them, so a call added to the code without
its grant, or a grant no code uses, fails the tests.
"""

from __future__ import annotations

__all__ = ["KOPF_CALLS", "OPERATOR_CALLS", "all_calls"]

Call = tuple[str, str, str]

_ENSURED = ("get", "create", "patch")  # `KubeClient.ensure`: read, create, correct drift

OPERATOR_CALLS: frozenset[Call] = frozenset(
    {
        # tenants.py: a Tenant's namespace (deleted with the Tenant) and its guard rails.
        *(("get", "", "namespaces"), ("create", "", "namespaces")),
        *(("patch", "", "namespaces"), ("delete", "", "namespaces")),
        *((verb, "", "serviceaccounts") for verb in _ENSURED),
        *((verb, "", "resourcequotas") for verb in _ENSURED),
        *((verb, "networking.k8s.io", "networkpolicies") for verb in _ENSURED),
        # tenants.py: the first API key, written once, never changed.
        ("get", "", "secrets"),
        ("create", "", "secrets"),
        # services.py: one Deployment per GPU type (dropped types deleted), Service, PDB.
        *((verb, "apps", "deployments") for verb in (*_ENSURED, "list", "delete")),
        *((verb, "", "services") for verb in _ENSURED),
        *((verb, "policy", "poddisruptionbudgets") for verb in _ENSURED),
        # services.py: a service's Model, its tenant's allowed models, the GPU types.
        ("get", "lmaas.io", "models"),
        ("get", "lmaas.io", "tenants"),
        ("list", "lmaas.io", "gputypes"),
        # adapters.py: the service of an Adapter and its runtime pods (placement).
        ("get", "lmaas.io", "modelservices"),
        ("list", "", "pods"),
        # finetuning.py: the Adapter a succeeded LoRA job creates.
        *((verb, "lmaas.io", "adapters") for verb in _ENSURED),
        # live_traffic.py: the gateway pods whose metrics give the live traffic.
        ("list", "discovery.k8s.io", "endpointslices"),
    }
)
"""What `lmaas_operator.kube.KubeClient` calls from the reconcilers."""

_KINDS = ("tenants", "models", "gputypes", "modelservices", "adapters", "finetunejobs")

KOPF_CALLS: frozenset[Call] = frozenset(
    {
        # Watching the custom resources (cluster-wide: --all-namespaces).
        *(("list", "lmaas.io", kind) for kind in _KINDS),
        *(("watch", "lmaas.io", kind) for kind in _KINDS),
        # Finalizers, progress and diff-base annotations on the object; status fields.
        *(("patch", "lmaas.io", kind) for kind in _KINDS),
        *(("patch", "lmaas.io", f"{kind}/status") for kind in _KINDS),
        # Discovering the custom resources it serves as their CRDs come and go.
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
        # Handler warnings and errors posted as events on the object (core v1 events).
        ("create", "", "events"),
    }
)
"""What kopf itself calls to run the handlers of `lmaas_operator.handlers`."""


def all_calls() -> frozenset[Call]:
    """Everything the operator process calls: what its ClusterRole must grant."""
    return OPERATOR_CALLS | KOPF_CALLS
