"""What the operator puts on runtime Deployments is what the runtime and the gateway read.

The label and annotation names are `lmaas.kube_names` (one definition for both sides); the
speculation policy the operator writes is one `lmaas.config.Settings` accepts.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmaas import kube_names as kn
from lmaas.config import Settings
from lmaas.engine.speculation.policy import parse_policy
from lmaas.gateway.activator.kubernetes import deployment_model
from lmaas_operator import naming as n
from lmaas_operator import service_manifests as sm
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec
from lmaas_operator.settings import OperatorSettings
from tests.operator.test_builders import MODEL, OWNER, valid

L4 = GPUTypeSpec(memory_gib=24, price_per_hour=0.7, bf16_tflops=121, mem_bandwidth_gbps=300)


def _deployment(model_name: str, speculation: dict | None = None) -> dict:
    spec = ModelServiceSpec.model_validate(
        {"model": model_name, "slo": {"targetMs": 40}, "speculation": speculation or {}}
    )
    return valid(
        sm.deployment(
            service="chat",
            namespace="tenant-acme",
            tenant="acme",
            spec=spec,
            model_name=model_name,
            model=MODEL,
            gpu=L4,
            group=sm.ReplicaGroup("l4", False, 2),
            settings=OperatorSettings(),
            owner=OWNER,
        )
    )


def test_the_operators_names_are_the_shared_ones() -> None:
    for name in (
        "LABEL_COMPONENT",
        "LABEL_MODEL",
        "LABEL_MODEL_SERVICE",
        "LABEL_GPU_TYPE",
        "LABEL_TENANT",
        "ANNOTATION_PLANNED_REPLICAS",
        "ANNOTATION_SERVERLESS",
        "ANNOTATION_IDLE_TIMEOUT",
        "ANNOTATION_REQUEST_RATE",
    ):
        assert getattr(n, name) is getattr(kn, name), name


def test_runtime_deployments_carry_the_model_the_activator_looks_them_up_by() -> None:
    body = _deployment("smol")
    assert body["metadata"]["labels"][kn.LABEL_MODEL] == "smol"
    assert body["spec"]["template"]["metadata"]["labels"][kn.LABEL_MODEL] == "smol"
    assert body["metadata"]["labels"][kn.LABEL_TENANT] == "acme"
    assert deployment_model(body) == "smol"
    # A name too long for a label value: no label, the activator reads the container's env.
    long_name = "m" * 70
    body = _deployment(long_name)
    assert kn.LABEL_MODEL not in body["metadata"]["labels"]
    assert deployment_model(body) == long_name


@pytest.mark.parametrize(
    ("speculation", "policy", "max_k"),
    [
        ({"policy": "off"}, "off", "4"),
        ({"policy": "fixed", "numSpeculativeTokens": 3}, "fixed:3", "3"),
        ({"numSpeculativeTokens": 8}, "smartspec", "8"),
    ],
)
def test_the_speculation_policy_is_one_the_runtime_accepts(
    speculation: dict, policy: str, max_k: str
) -> None:
    container = _deployment("smol", speculation)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["LMAAS_SPECULATION"], env["LMAAS_SPECULATION_MAX_K"]) == (policy, max_k)
    settings = Settings(
        speculation=env["LMAAS_SPECULATION"], speculation_max_k=env["LMAAS_SPECULATION_MAX_K"]
    )
    assert (settings.speculation, str(settings.speculation_max_k)) == (policy, max_k)
    assert str(parse_policy(settings.speculation)) == policy, "the engine's own grammar"


@pytest.mark.parametrize("bad", ["fixed", "off:2", "fixed:17", "smartspec:4", "sometimes"])
def test_a_bad_speculation_policy_is_refused_with_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ValidationError, match="speculation policy"):
        Settings(speculation=bad)
    assert Settings(speculation=" Fixed:0 ").speculation == "off", "normalised"
