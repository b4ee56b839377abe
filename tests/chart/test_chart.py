"""The Helm chart: lints, renders valid manifests for every way of configuring it, and
installs, upgrades and uninstalls (CRDs kept) against the Kubernetes stand-in."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from lmaas_operator.crds import KINDS, crd_manifest
from lmaas_operator.kube import KubeClient
from tests.chart.conftest import CHART, run
from tests.k8s_standin import KubeStandIn

VALUE_SETS = {
    "defaults": [],
    "external-urls": [
        "--set", "database.bundled=false",
        "--set", "database.url=postgresql+psycopg2://u:p@db:5432/lmaas",
        "--set", "redis.bundled=false",
        "--set", "redis.url=redis://redis:6379/0",
        "--set", "artifactUrl=s3://bucket/lmaas",
    ],
    "existing-secrets": [
        "--set", "database.bundled=false",
        "--set", "database.existingSecret=platform-db",
        "--set", "redis.bundled=false",
        "--set", "redis.existingSecret=platform-redis",
        "--set", "adminToken.existingSecret=platform-admin",
        "--set", "postgresql.existingSecret=unused",
    ],
    "no-rbac": ["--set", "rbac.create=false", "--set", "worker.replicas=0"],
}  # fmt: skip


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = run(
        helm, "template", "r1", CHART, "-n", "lmaas-system", "--kube-version", "1.30.0", *args
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_lint_is_clean(helm: Path) -> None:
    result = run(helm, "lint", "--strict", CHART)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "gateway.replicas=0"], "gateway.replicas"),
        (["--set", "gatway.replicas=2"], "gatway"),
        (["--set", "redis.url=http://nope"], "redis.url"),
        (["--set", "database.bundled=false"], "database.url, or database.existingSecret"),
    ],
)
def test_bad_values_are_refused_with_a_reason(helm: Path, args: list[str], message: str) -> None:
    result = run(helm, "template", "r1", CHART, "--kube-version", "1.30.0", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(helm: Path, name: str) -> None:
    docs = render(helm, *VALUE_SETS[name])
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"r1-lmaas-gateway", "r1-lmaas-worker", "r1-lmaas-operator"}
    for dep in deployments.values():
        pod = dep["spec"]["template"]
        assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/config"])
        container = pod["spec"]["containers"][0]
        assert container["resources"]["requests"]
        if dep["metadata"]["name"] != "r1-lmaas-worker":  # Celery serves no HTTP
            assert container["livenessProbe"] and container["readinessProbe"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for e in container["env"]}
        assert "LMAAS_DATABASE_URL" in env and "LMAAS_BROKER_URL" in env
    secret_values = json.dumps(by_kind(docs, "Secret"))
    assert "u:p@db" not in json.dumps(deployments)  # URLs with passwords only in Secrets
    if name == "existing-secrets":
        assert "database-url" not in secret_values and "admin-token" not in secret_values
        env = {
            e["name"]: e
            for e in deployments["r1-lmaas-gateway"]["spec"]["template"]["spec"]["containers"][0][
                "env"
            ]
        }
        assert env["LMAAS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "platform-db"
    bundled = by_kind(docs, "StatefulSet")
    assert ("r1-lmaas-postgresql" in bundled) == (name in ("defaults", "no-rbac"))
    assert bool(by_kind(docs, "ClusterRole")) == (name != "no-rbac")


def test_checksum_changes_with_the_config(helm: Path) -> None:
    fixed = ("--set", "adminToken.existingSecret=a", "--set", "postgresql.existingSecret=p")

    def checksum(*args: str) -> str:  # generated secrets differ per `helm template`: fix them
        dep = by_kind(render(helm, *fixed, *args), "Deployment")["r1-lmaas-gateway"]
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum("--set", "artifactUrl=s3://a") == checksum(
        "--set", "artifactUrl=s3://a", "--set", "gateway.replicas=3"
    )
    assert checksum("--set", "artifactUrl=s3://a") != checksum("--set", "artifactUrl=s3://b")


def test_rbac_is_least_privilege(helm: Path) -> None:
    roles = by_kind(render(helm), "ClusterRole")
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
    operator = roles["r1-lmaas-operator"]["rules"]
    secrets = [r for r in operator if "secrets" in r["resources"]]
    assert secrets and all(set(r["verbs"]) <= {"get", "create"} for r in secrets)
    gateway = roles["r1-lmaas-gateway"]["rules"]
    scale = [r for r in gateway if "deployments/scale" in r["resources"]]
    assert scale and set(scale[0]["verbs"]) == {"patch"}
    assert not any("secrets" in r["resources"] for r in gateway)


def _value_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            keys.append(path)
            if key not in ("resources", "podSecurityContext"):
                keys += _value_keys(value, path)
    return keys


def test_every_value_is_commented_and_in_the_schema() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        exempt = any(k in ("resources", "podSecurityContext") for _, k in parents)
        parents.append((indent, key))
        if exempt:
            continue
        previous = next(p for p in reversed(lines[:number]) if p.strip())
        assert previous.strip().startswith("#"), f"values.yaml:{number + 1} {key} has no comment"
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_keys(values):
        node = schema
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path} is missing from values.schema.json"
            node = node["properties"][part]


def test_templates_use_only_helm_3_6_features() -> None:
    newer = (
        "mustToYaml",
        "mustFromJson",
        "toToml",
        "fromYamlArray",
        "fromJsonArray",
        "getHostByName",
    )
    for path in (CHART / "templates").glob("*"):
        text = path.read_text()
        for name in newer:
            assert name not in text, f"{path.name} uses {name}"
        if path.suffix == ".yaml":
            assert 'include "lmaas.labels"' in text, f"{path.name} does not label its objects"
        for name in re.findall(r'define "([^"]+)"', text):
            assert name.startswith("lmaas."), f"helper {name} is not namespaced lmaas.*"


def test_install_upgrade_uninstall_against_the_standin(
    helm: Path, standin: KubeStandIn, cluster_env: dict[str, str]
) -> None:
    kube = KubeClient(httpx.Client(base_url=standin.url, timeout=10))
    ns = "lmaas-system"
    # The stand-in has no /openapi: kubernetes-validate checks the schemas (tests above);
    # helm 3.6's --create-namespace validates against /openapi regardless, so create it here.
    no_openapi = "--disable-openapi-validation"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    run(helm, "install", "r1", CHART, "-n", ns, no_openapi, env=cluster_env)
    for kind in KINDS:  # helm created the CRDs from crds/ before the templates
        assert standin_get(standin, "CustomResourceDefinition", kind.crd_name) is not None
    deployments = {d["metadata"]["name"]: d for d in kube.list("apps/v1", "Deployment", ns)}
    assert set(deployments) == {"r1-lmaas-gateway", "r1-lmaas-worker", "r1-lmaas-operator"}
    secret = kube.get("v1", "Secret", "r1-lmaas-secrets", ns)
    token = secret["data"]["admin-token"]
    before = deployments["r1-lmaas-gateway"]["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]

    run(
        helm,
        "upgrade",
        "r1",
        CHART,
        "-n",
        ns,
        no_openapi,
        "--set",
        "gateway.replicas=3",
        "--set",
        "logLevel=DEBUG",
        env=cluster_env,
    )
    gateway = kube.get("apps/v1", "Deployment", "r1-lmaas-gateway", ns)
    assert gateway["spec"]["replicas"] == 3
    assert gateway["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != before
    assert kube.get("v1", "Secret", "r1-lmaas-secrets", ns)["data"]["admin-token"] == token  # kept
    history = run(helm, "history", "r1", "-n", ns, "-o", "json", env=cluster_env)
    assert [r["revision"] for r in json.loads(history.stdout)] == [1, 2]

    run(helm, "uninstall", "r1", "-n", ns, env=cluster_env)
    assert kube.list("apps/v1", "Deployment", ns) == []
    assert kube.get("v1", "Secret", "r1-lmaas-secrets", ns) is None
    for kind in KINDS:  # CRDs (and so every tenant's resources) survive the uninstall
        assert standin_get(standin, "CustomResourceDefinition", kind.crd_name) is not None
    kube.close()


def standin_get(standin: KubeStandIn, kind: str, name: str) -> dict[str, Any] | None:
    assert kind == "CustomResourceDefinition"
    response = httpx.get(
        f"{standin.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    )
    return response.json() if response.status_code == 200 else None


def test_kubectl_applies_the_examples(
    kubectl: str, standin: KubeStandIn, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    for kind in KINDS:
        standin.declare_crd(crd_manifest(kind))
    kube = KubeClient(httpx.Client(base_url=standin.url, timeout=10))
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-acme"}})
    result = run(kubectl, "apply", "--validate=false", "-f", CHART / "examples", env=cluster_env)
    assert result.stdout.count("created") == 7
    assert (
        kube.get("lmaas.io/v1alpha1", "ModelService", "chat", "tenant-acme")["spec"]["slo"][
            "targetMs"
        ]
        == 40
    )
    again = run(kubectl, "apply", "--validate=false", "-f", CHART / "examples", env=cluster_env)
    assert "created" not in again.stdout
    listed = run(kubectl, "get", "gputypes", "-o", "name", env=cluster_env)
    assert listed.stdout.split() == ["gputype.lmaas.io/a100-80gb", "gputype.lmaas.io/l4"]
    kube.close()
