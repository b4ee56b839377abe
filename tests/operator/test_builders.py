"""Manifest builders: valid Kubernetes objects that say what lmaas means."""

from __future__ import annotations

import base64

import kubernetes_validate
import pytest

from lmaas_operator import naming as n
from lmaas_operator import service_manifests as sm
from lmaas_operator import tenant_manifests as tm
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec, TenantSpec
from lmaas_operator.settings import OperatorSettings

OWNER = tm.owner_reference(
    {
        "apiVersion": "lmaas.io/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "acme", "uid": "0b7c3c1e-0000-4000-8000-000000000001"},
    }
)
MODEL = ModelSpec(
    source="/models/smol",
    num_params=135_000_000,
    num_layers=30,
    hidden_size=576,
    num_kv_heads=3,
    head_dim=64,
)
A100 = GPUTypeSpec.model_validate(
    {
        "memoryGib": 80,
        "pricePerHour": 3.0,
        "spotPricePerHour": 1.2,
        "bf16Tflops": 312,
        "memBandwidthGbps": 2039,
        "gpusPerReplica": 2,
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "spot": {
            "nodeSelector": {"spot": "true"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
        },
    }
)


def valid(obj: dict) -> dict:
    kubernetes_validate.validate(obj, "1.30", strict=True)
    return obj


def service_spec(**scaling) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate(
        {
            "model": "smol",
            "slo": {"targetMs": 40},
            "scaling": scaling,
            "runtime": {"env": {"X": "1"}},
        }
    )


def test_tenant_objects_are_valid_and_labelled() -> None:
    spec = TenantSpec.model_validate(
        {"quotas": {"gpus": 4, "pods": 10}, "egressCidrs": ["10.0.0.0/8"]}
    )
    ns = valid(tm.tenant_namespace_manifest("acme", "tenant-acme", OWNER))
    assert ns["metadata"]["labels"][n.LABEL_TENANT] == "acme"
    quota = valid(tm.resource_quota("acme", "tenant-acme", spec, OWNER))
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"
    assert quota["spec"]["hard"]["pods"] == "10"
    sa = valid(tm.service_account("acme", "tenant-acme", OWNER))
    assert sa["automountServiceAccountToken"] is False
    secret = valid(tm.api_key_secret("acme", "tenant-acme", "sk-lmaas-abc", OWNER))
    assert base64.b64decode(secret["data"]["api-key"]) == b"sk-lmaas-abc"
    for obj in (quota, sa, secret):
        assert obj["metadata"]["namespace"] == "tenant-acme"
        assert obj["metadata"]["ownerReferences"] == [OWNER]


def test_network_policy_allows_only_own_namespace_platform_and_dns() -> None:
    spec = TenantSpec.model_validate({"egressCidrs": ["10.1.0.0/16"]})
    policy = valid(
        tm.network_policy("acme", "tenant-acme", spec, OWNER, platform_namespace="lmaas")
    )
    body = policy["spec"]
    assert body["podSelector"] == {} and body["policyTypes"] == ["Ingress", "Egress"]
    sources = body["ingress"][0]["from"]
    assert {"podSelector": {}} in sources  # own namespace
    platform = next(s for s in sources if "namespaceSelector" in s)
    assert platform["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "lmaas"}
    dns = next(rule for rule in body["egress"] if "ports" in rule)
    assert {p["port"] for p in dns["ports"]} == {53}
    assert {"ipBlock": {"cidr": "10.1.0.0/16"}} in body["egress"][-1]["to"]
    # nothing opens the whole world
    for rule in body["egress"]:
        for peer in rule["to"]:
            assert peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0"


def test_selector_parsing() -> None:
    assert tm.parse_selector("a=b, c = d") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError, match="key=value"):
        tm.parse_selector("a")


@pytest.mark.parametrize("spot", [False, True])
def test_deployment_lands_on_its_gpu_type(spot: bool) -> None:
    group = sm.ReplicaGroup("a100", spot, 3)
    dep = valid(
        sm.deployment(
            service="chat",
            namespace="tenant-acme",
            tenant="acme",
            spec=service_spec(minReplicas=1),
            model_name="smol",
            model=MODEL,
            gpu=A100,
            group=group,
            settings=OperatorSettings(runtime_env={"LMAAS_ARTIFACT_URL": "s3://b"}),
            owner=OWNER,
        )
    )
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert dep["metadata"]["name"] == ("chat-a100-spot" if spot else "chat-a100")
    assert dep["spec"]["replicas"] == 3
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == ({"gpu": "a100", "spot": "true"} if spot else {"gpu": "a100"})
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == (["nvidia.com/gpu", "spot"] if spot else ["nvidia.com/gpu"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LMAAS_BASE_MODEL"] == "/models/smol" and env["X"] == "1"
    assert env["LMAAS_ARTIFACT_URL"] == "s3://b"
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels[n.LABEL_MODEL_SERVICE] == "chat" and labels[n.LABEL_TENANT] == "acme"
    assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())


def test_serverless_deployment_starts_at_zero_with_the_plan_annotated() -> None:
    dep = sm.deployment(
        service="chat",
        namespace="ns",
        tenant=None,
        spec=service_spec(minReplicas=0, idleTimeoutSeconds=120),
        model_name="smol",
        model=MODEL,
        gpu=A100,
        group=sm.ReplicaGroup("a100", False, 4),
        settings=OperatorSettings(),
        owner=OWNER,
    )
    assert dep["spec"]["replicas"] == 0
    annotations = dep["metadata"]["annotations"]
    assert annotations[n.ANNOTATION_PLANNED_REPLICAS] == "4"
    assert annotations[n.ANNOTATION_SERVERLESS] == "true"
    assert annotations[n.ANNOTATION_IDLE_TIMEOUT] == "120"


def test_service_and_pdb_select_every_gpu_type() -> None:
    svc = valid(
        sm.runtime_service(service="chat", namespace="ns", tenant="acme", port=8001, owner=OWNER)
    )
    pdb = valid(
        sm.pod_disruption_budget(service="chat", namespace="ns", tenant="acme", owner=OWNER)
    )
    assert n.LABEL_GPU_TYPE not in svc["spec"]["selector"]
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sm.service_endpoint("chat", "ns", 8001) == "http://chat.ns.svc:8001"


def test_replica_groups_skip_empty_types() -> None:
    groups = sm.replica_groups({"l4": 2, "a100": 0}, {"a100": 1})
    assert groups == [sm.ReplicaGroup("l4", False, 2), sm.ReplicaGroup("a100", True, 1)]


def test_names_fit_kubernetes_limits_and_are_stable() -> None:
    long = "a-very-long-service-name-that-goes-on-and-on-forever-and-ever"
    name = n.deployment_name(long, "nvidia.h100.80gb", spot=True)
    assert len(name) <= 47 and name == n.deployment_name(long, "nvidia.h100.80gb", spot=True)
    assert name != n.deployment_name(long, "nvidia.h100.80gb", spot=False)
    assert n.dns_label("9lives")[0].isalpha()
    assert n.tenant_namespace("acme") == "tenant-acme"
    assert n.tenant_namespace("acme", "custom") == "custom"


def test_canonical_hash_ignores_key_order_only() -> None:
    assert n.canonical_hash({"a": 1, "b": [1, 2]}) == n.canonical_hash({"b": [1, 2], "a": 1})
    assert n.canonical_hash({"a": 1}) != n.canonical_hash({"a": 2})


def test_cpu_gpu_type_requests_no_accelerator() -> None:
    cpu = GPUTypeSpec(
        memory_gib=16, price_per_hour=0.1, bf16_tflops=1, mem_bandwidth_gbps=50, resource_name=""
    )
    dep = valid(
        sm.deployment(
            service="chat",
            namespace="ns",
            tenant=None,
            spec=service_spec(minReplicas=1),
            model_name="smol",
            model=MODEL,
            gpu=cpu,
            group=sm.ReplicaGroup("cpu", False, 1),
            settings=OperatorSettings(),
            owner=OWNER,
        )
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert {"name": "LMAAS_DEVICE", "value": "cpu"} in container["env"]
