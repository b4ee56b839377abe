"""The operator run for real (kopf's KopfRunner) against the Kubernetes stand-in.

Tenant → ModelService → Adapter → FineTuneJob through their lifecycles, with the platform
database (SQLite and PostgreSQL), a Celery broker, and runtime pods served by stand-ins.
Includes an operator restart in the middle of a reconcile and deletions with finalizers.
"""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import func, select

from lmaas.store import Database
from lmaas.store import models as m
from lmaas.store.tenants import authenticate_key
from lmaas_operator.crds import API_VERSION as A
from lmaas_operator.kube import KubeClient
from lmaas_operator.rbac import all_calls
from tests.k8s_standin import KubeStandIn
from tests.operator.fake_runtime import FakeRuntime, runtime_pod

pytestmark = [
    pytest.mark.timeout(240),
    # kombu's SQLAlchemy broker transport (the embedded broker) still uses `noload`.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    # kopf leaves the HTTP session of a timer that is patching at shutdown to the GC.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in.*(socket|_SelectorTransport|ClientSession|BaseConnector)"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

GPU_A100 = {
    "memoryGib": 80,
    "pricePerHour": 3.0,
    "spotPricePerHour": 1.0,
    "bf16Tflops": 312,
    "memBandwidthGbps": 2039,
    "nodeSelector": {"gpu": "a100"},
    "spot": {"nodeSelector": {"spot": "true"}},
}
GPU_L4 = {"memoryGib": 24, "pricePerHour": 0.7, "bf16Tflops": 121, "memBandwidthGbps": 300}
MODEL = {
    "source": "/models/smol",
    "numParams": 135_000_000,
    "numLayers": 30,
    "hiddenSize": 576,
    "numKvHeads": 3,
    "headDim": 64,
}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, TypeError, IndexError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def ready(body: dict[str, Any] | None) -> bool:
    conditions = ((body or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def condition(body: dict[str, Any] | None) -> dict[str, Any]:
    conditions = ((body or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def cr(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None, **meta: Any):
    metadata: dict[str, Any] = {"name": name, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": A, "kind": kind, "metadata": metadata, "spec": spec}


@pytest.fixture
def db(env: dict[str, str]) -> Iterator[Database]:
    database = Database(env["LMAAS_DATABASE_URL"])
    yield database
    database.dispose()


@contextmanager
def operator() -> Iterator[Any]:
    from kopf.testing import KopfRunner

    args = ["run", "--all-namespaces", "--standalone", "-m", "lmaas_operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    gc.collect()  # kopf's leftover HTTP sessions are reported here, under this module's filters
    assert runner.exception is None, runner.output[-3000:]


def count(db: Database, query) -> int:
    with db.session() as s:
        return s.scalar(query)


def test_lifecycle_tenant_service_adapter_finetune(
    standin: KubeStandIn, kube: KubeClient, db: Database, env: dict[str, str]
) -> None:
    ns = "tenant-acme"
    with operator(), FakeRuntime() as pod0, FakeRuntime() as pod1:
        kube.create(cr("GPUType", "a100", GPU_A100))
        kube.create(cr("GPUType", "l4", GPU_L4))
        kube.create(cr("Model", "smol", MODEL))
        kube.create(cr("Tenant", "acme", {"quotas": {"gpus": 4}, "allowedModels": ["smol"]}))

        # Tenant: namespace, guard rails, database row, one API key in a Secret.
        tenant = wait_for(
            "tenant ready",
            lambda: ready(kube.get(A, "Tenant", "acme")) and kube.get(A, "Tenant", "acme"),
        )
        assert tenant["status"]["namespace"] == ns
        assert tenant["metadata"]["finalizers"] == ["lmaas.io/finalizer"]
        namespace = kube.get("v1", "Namespace", ns)
        assert namespace["metadata"]["labels"]["lmaas.io/tenant"] == "acme"
        assert namespace["metadata"]["ownerReferences"][0]["uid"] == tenant["metadata"]["uid"]
        assert (
            kube.get("v1", "ResourceQuota", "lmaas-quota", ns)["spec"]["hard"][
                "requests.nvidia.com/gpu"
            ]
            == "4"
        )
        assert kube.get("networking.k8s.io/v1", "NetworkPolicy", "lmaas-tenant-isolation", ns)
        assert kube.get("v1", "ServiceAccount", "lmaas-tenant", ns)
        secret = kube.get("v1", "Secret", "lmaas-api-key", ns)
        api_key = base64.b64decode(secret["data"]["api-key"]).decode()
        with db.session() as s:
            assert authenticate_key(s, api_key).name == "acme"
        # Drift of the tenant's guard rails is corrected on the timer.
        kube.patch("v1", "ResourceQuota", "lmaas-quota", {"spec": {"hard": {"pods": "999"}}}, ns)
        kube.patch(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "lmaas-tenant-isolation",
            {"spec": {"policyTypes": ["Ingress"]}},
            ns,
        )
        kube.patch(
            "v1", "ServiceAccount", "lmaas-tenant", {"automountServiceAccountToken": True}, ns
        )
        kube.patch(
            "v1", "Namespace", ns, {"metadata": {"labels": {"app.kubernetes.io/part-of": "x"}}}
        )
        wait_for(
            "tenant drift corrected",
            lambda: (
                kube.get("v1", "ResourceQuota", "lmaas-quota", ns)["spec"]["hard"]["pods"] == "50"
                and kube.get("networking.k8s.io/v1", "NetworkPolicy", "lmaas-tenant-isolation", ns)[
                    "spec"
                ]["policyTypes"]
                == ["Ingress", "Egress"]
                and kube.get("v1", "ServiceAccount", "lmaas-tenant", ns)[
                    "automountServiceAccountToken"
                ]
                is False
                and kube.get("v1", "Namespace", ns)["metadata"]["labels"][
                    "app.kubernetes.io/part-of"
                ]
                == "lmaas"
            ),
        )
        assert wait_for("model registered", lambda: ready(kube.get(A, "Model", "smol")))
        with db.session() as s:
            assert s.get(m.ServedModel, "smol").uri == "/models/smol"

        # ModelService with an explicit mix: one Deployment per GPU type, Service, PDB, status.
        kube.create(
            cr(
                "ModelService",
                "chat",
                {
                    "model": "smol",
                    "slo": {"targetMs": 40},
                    "scaling": {"minReplicas": 1},
                    "gpu": {"mode": "explicit", "counts": {"a100": 2}},
                },
                ns,
            )
        )
        svc = wait_for(
            "service ready",
            lambda: (
                ready(kube.get(A, "ModelService", "chat", ns))
                and kube.get(A, "ModelService", "chat", ns)
            ),
        )
        assert svc["status"]["plan"]["counts"] == {"a100": 2}
        assert svc["status"]["costPerHour"] == pytest.approx(6.0)
        assert svc["status"]["endpoint"] == f"http://chat.{ns}.svc:8001"
        dep = kube.get("apps/v1", "Deployment", "chat-a100", ns)
        assert dep["spec"]["replicas"] == 2
        assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "a100"}
        assert dep["metadata"]["labels"]["lmaas.io/model"] == "smol", "the activator's key"
        assert dep["spec"]["template"]["metadata"]["labels"]["lmaas.io/model"] == "smol"
        assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
        assert kube.get("v1", "Service", "chat", ns) and kube.get(
            "policy/v1", "PodDisruptionBudget", "chat", ns
        )

        # A new mix: the l4 Deployment appears, the a100 one goes.
        kube.patch(
            A, "ModelService", "chat", {"spec": {"gpu": {"counts": {"a100": None, "l4": 3}}}}, ns
        )
        wait_for("l4 deployment", lambda: kube.get("apps/v1", "Deployment", "chat-l4", ns))
        wait_for(
            "a100 deployment gone",
            lambda: kube.get("apps/v1", "Deployment", "chat-a100", ns) is None,
        )
        wait_for(
            "status follows",
            lambda: (
                kube.get(A, "ModelService", "chat", ns)["status"]["costPerHour"]
                == pytest.approx(2.1)
            ),
        )

        # Drift is corrected on the timer.
        kube.patch(
            "apps/v1",
            "Deployment",
            "chat-l4",
            {"spec": {"replicas": 7, "template": {"spec": {"nodeSelector": {"x": "y"}}}}},
            ns,
        )
        kube.patch("v1", "Service", "chat", {"spec": {"type": "NodePort"}}, ns)
        kube.patch("policy/v1", "PodDisruptionBudget", "chat", {"spec": {"maxUnavailable": 5}}, ns)
        wait_for(
            "drift corrected",
            lambda: (
                kube.get("apps/v1", "Deployment", "chat-l4", ns)["spec"]["replicas"] == 3
                and kube.get("v1", "Service", "chat", ns)["spec"]["type"] == "ClusterIP"
                and kube.get("policy/v1", "PodDisruptionBudget", "chat", ns)["spec"][
                    "maxUnavailable"
                ]
                == 1
            ),
        )

        # A serverless service starts at zero; the operator leaves the activator's scale alone.
        kube.create(
            cr(
                "ModelService",
                "batch",
                {
                    "model": "smol",
                    "slo": {"targetMs": 80},
                    "gpu": {"mode": "explicit", "counts": {"a100": 2}},
                },
                ns,
            )
        )
        batch = wait_for(
            "serverless ready",
            lambda: (
                ready(kube.get(A, "ModelService", "batch", ns))
                and kube.get(A, "ModelService", "batch", ns)
            ),
        )
        assert batch["status"]["serverless"] is True and batch["status"]["totalReplicas"] == 0
        assert condition(batch)["reason"] == "ScaledToZero"
        dep = kube.get("apps/v1", "Deployment", "batch-a100", ns)
        assert dep["spec"]["replicas"] == 0
        assert dep["metadata"]["annotations"]["lmaas.io/planned-replicas"] == "2"
        kube.patch(
            "apps/v1", "Deployment", "batch-a100", {"spec": {"replicas": 2}}, ns
        )  # activator
        wait_for(
            "status sees the scale-up",
            lambda: kube.get(A, "ModelService", "batch", ns)["status"]["totalReplicas"] == 2,
        )
        time.sleep(2.2)  # two resync ticks
        assert kube.get("apps/v1", "Deployment", "batch-a100", ns)["spec"]["replicas"] == 2

        # The planner picks the mix when gpu.mode is auto (serverless: planned, at zero).
        kube.create(
            cr(
                "ModelService",
                "auto",
                {"model": "smol", "slo": {"targetMs": 50}, "workload": {"rate": 5}},
                ns,
            )
        )
        auto = wait_for(
            "planned",
            lambda: (
                ready(kube.get(A, "ModelService", "auto", ns))
                and kube.get(A, "ModelService", "auto", ns)
            ),
        )
        plan = auto["status"]["plan"]
        assert plan["source"] == "planner" and plan["costPerHour"] > 0
        assert set(plan["counts"]) <= {"a100", "l4"} and sum(plan["counts"].values()) >= 1
        for gpu, planned in plan["counts"].items():
            dep = kube.get("apps/v1", "Deployment", f"auto-{gpu}", ns)
            assert dep["spec"]["replicas"] == 0
            assert dep["metadata"]["annotations"]["lmaas.io/planned-replicas"] == str(planned)

        # A model the tenant may not use is refused with a reason.
        kube.create(cr("Model", "big", {**MODEL, "source": "/models/big"}))
        kube.create(
            cr(
                "ModelService",
                "nope",
                {
                    "model": "big",
                    "slo": {"targetMs": 40},
                    "gpu": {"mode": "explicit", "counts": {"l4": 1}},
                },
                ns,
            )
        )
        refused = wait_for(
            "refused",
            lambda: (
                condition(kube.get(A, "ModelService", "nope", ns)).get("reason")
                == "ModelNotAllowed"
                and kube.get(A, "ModelService", "nope", ns)
            ),
        )
        assert "may not use model 'big'" in condition(refused)["message"]
        assert kube.get("apps/v1", "Deployment", "nope-l4", ns) is None

        # Adapter: registered, loaded on k replicas by traffic, unloaded on delete.
        kube.create(runtime_pod("chat-l4-abc-0", ns, "chat", pod0.port))
        kube.create(runtime_pod("chat-l4-abc-1", ns, "chat", pod1.port))
        kube.create(
            cr("Adapter", "bot", {"service": "chat", "source": "s3://acme/bot", "rank": 8}, ns)
        )
        adapter = wait_for(
            "adapter placed",
            lambda: (
                kube.get(A, "Adapter", "bot", ns)["status"].get("loadedOn")
                and kube.get(A, "Adapter", "bot", ns)
            ),
        )
        assert adapter["status"]["replicas"] == 1 and len(adapter["status"]["loadedOn"]) == 1
        adapter_id = adapter["status"]["adapterId"]
        assert sum(adapter_id in p.adapters for p in (pod0, pod1)) == 1
        with db.session() as s:
            row = s.get(m.Adapter, adapter_id)
            assert (row.name, row.uri, row.base_model) == ("bot", "s3://acme/bot", "smol")
        kube.patch(
            A, "Adapter", "bot", {"metadata": {"annotations": {"lmaas.io/request-rate": "10"}}}, ns
        )
        wait_for(
            "adapter on both",
            lambda: len(kube.get(A, "Adapter", "bot", ns)["status"]["loadedOn"]) == 2,
        )
        assert all(adapter_id in p.adapters for p in (pod0, pod1))
        assert pod0.adapters[adapter_id].uri == "s3://acme/bot"
        kube.patch(
            A, "Adapter", "bot", {"metadata": {"annotations": {"lmaas.io/request-rate": "0"}}}, ns
        )
        wait_for(
            "adapter back on one", lambda: sum(adapter_id in p.adapters for p in (pod0, pod1)) == 1
        )
        kube.delete(A, "Adapter", "bot", ns)
        wait_for("adapter deleted", lambda: kube.get(A, "Adapter", "bot", ns) is None)
        assert not pod0.adapters and not pod1.adapters
        with db.session() as s:
            assert s.get(m.Adapter, adapter_id) is None

        # FineTuneJob: a queued row, one task message on the broker, progress mirrored,
        # and the Adapter of the succeeded LoRA job.
        tenant_id = tenant["status"]["tenantId"]
        with db.session() as s:
            s.add(
                m.FileObject(
                    id="file-train",
                    tenant_id=tenant_id,
                    filename="t.jsonl",
                    purpose="fine-tune",
                    bytes=10,
                    uri="x",
                )
            )
        kube.create(
            cr(
                "FineTuneJob",
                "tune",
                {
                    "model": "smol",
                    "trainingFile": "file-train",
                    "output": {"service": "chat", "adapterName": "bot-v2"},
                },
                ns,
            )
        )
        job = wait_for(
            "job submitted",
            lambda: (
                kube.get(A, "FineTuneJob", "tune", ns)["status"].get("jobId")
                and kube.get(A, "FineTuneJob", "tune", ns)
            ),
        )
        job_id = job["status"]["jobId"]
        assert job["status"]["phase"] == "queued"
        with Connection(env["LMAAS_BROKER_URL"]) as conn:
            queue = conn.SimpleQueue(env["LMAAS_TASK_QUEUE"])
            message = queue.get(timeout=10)
            assert message.headers["task"] == "lmaas.finetune.run_job"
            assert message.headers["id"] == job_id
            assert message.payload[0] == [job_id]
            message.ack()
            queue.close()
        with db.session() as s:
            row = s.get(m.FineTuneJob, job_id)
            assert (row.status, row.method, row.training_file_id) == (
                "queued",
                "lora",
                "file-train",
            )
            row.status, row.step, row.total_steps = "running", 5, 10
            s.add(m.JobEvent(job_id=job_id, message="step 5/10: loss 1.23"))
        wait_for(
            "progress mirrored",
            lambda: kube.get(A, "FineTuneJob", "tune", ns)["status"].get("progress") == "5/10",
        )
        events = kube.get(A, "FineTuneJob", "tune", ns)["status"]["events"]
        assert events[-1]["message"] == "step 5/10: loss 1.23"
        with db.session() as s:
            row = s.get(m.FineTuneJob, job_id)
            row.status, row.step, row.fine_tuned_model = "succeeded", 10, "ft:smol:acme:bot-v2"
            s.add(
                m.Adapter(
                    tenant_id=tenant_id,
                    name="ft:smol:acme:bot-v2",
                    base_model="smol",
                    rank=16,
                    alpha=32.0,
                    uri="s3://acme/ft/bot-v2",
                    source="fine-tune",
                )
            )
        created = wait_for("adapter of the job", lambda: kube.get(A, "Adapter", "bot-v2", ns))
        assert created["spec"]["source"] == "s3://acme/ft/bot-v2" and created["spec"]["rank"] == 16
        assert created["spec"]["adapterName"] == "ft:smol:acme:bot-v2"
        wait_for(
            "job status",
            lambda: kube.get(A, "FineTuneJob", "tune", ns)["status"].get("adapter") == "bot-v2",
        )
        wait_for("created adapter placed", lambda: ready(kube.get(A, "Adapter", "bot-v2", ns)))
        assert (
            count(
                db,
                select(func.count())
                .select_from(m.Adapter)
                .where(m.Adapter.name == "ft:smol:acme:bot-v2"),
            )
            == 1
        )

        # Deleting the Tenant: the finalizer removes its rows and keys, then its namespace.
        kube.delete(A, "Tenant", "acme")
        wait_for("tenant gone", lambda: kube.get(A, "Tenant", "acme") is None)

        assert kube.get("v1", "Namespace", ns) is None
        with db.session() as s:
            assert authenticate_key(s, api_key) is None
            assert s.scalar(select(func.count()).select_from(m.Tenant)) == 0
            assert s.scalar(select(func.count()).select_from(m.FineTuneJob)) == 0

    # What the operator called is what its RBAC grants (lmaas_operator.rbac; the chart's
    # role equals those tables, tests/chart/test_rbac.py): nothing ungranted, nothing unused.
    called = standin.calls_by("lmaas-operator") | standin.calls_by("kopf")
    assert called - all_calls() == set(), "called but not in lmaas_operator.rbac"
    # kopf posts events from a background task the stand-in never starts (no event
    # resource discovery); every other grant is used in this lifecycle.
    assert all_calls() - called == {("create", "", "events")}, "granted but not called"


def test_restart_in_the_middle_of_a_reconcile_issues_one_key(
    standin: KubeStandIn, kube: KubeClient, db: Database, env: dict[str, str]
) -> None:
    ns = "tenant-beta"
    standin.fail("POST", r"/namespaces/tenant-beta/networkpolicies$", 503)
    with operator():
        kube.create(cr("Tenant", "beta", {}))
        failed = wait_for(
            "a half-done reconcile",
            lambda: (
                condition(kube.get(A, "Tenant", "beta")).get("reason") == "ApiUnavailable"
                and kube.get(A, "Tenant", "beta")
            ),
        )
        assert "503" in condition(failed)["message"]
        assert kube.get("v1", "Namespace", ns) and kube.get(
            "v1", "ResourceQuota", "lmaas-quota", ns
        )
        assert kube.get("v1", "Secret", "lmaas-api-key", ns) is None
    # The operator is down; the fault goes away; a new operator process finishes the job.
    standin.heal()
    with operator():
        wait_for(
            "tenant ready after restart", lambda: ready(kube.get(A, "Tenant", "beta")), timeout=30
        )
    with operator():  # a second restart changes nothing
        time.sleep(1.5)
        assert ready(kube.get(A, "Tenant", "beta"))
    secret = kube.get("v1", "Secret", "lmaas-api-key", ns)
    api_key = base64.b64decode(secret["data"]["api-key"]).decode()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.ApiKey)) == 1
        assert authenticate_key(s, api_key).name == "beta"


def test_deleting_while_the_operator_is_down_is_finished_on_start(
    standin: KubeStandIn, kube: KubeClient, db: Database, env: dict[str, str]
) -> None:
    with operator():
        kube.create(cr("Tenant", "gamma", {}))
        wait_for("tenant ready", lambda: ready(kube.get(A, "Tenant", "gamma")))
    kube.delete(A, "Tenant", "gamma")
    assert kube.get(A, "Tenant", "gamma")["metadata"]["deletionTimestamp"]  # held by the finalizer
    with operator():
        wait_for("tenant gone", lambda: kube.get(A, "Tenant", "gamma") is None)
    assert kube.get("v1", "Namespace", "tenant-gamma") is None
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(m.Tenant)) == 0
