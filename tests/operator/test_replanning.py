"""Live re-planning: the operator follows the traffic the gateways report, with hysteresis.

The gateways' metrics come from the gateway's own `GatewayMetrics` (the real exporter),
served over HTTP; the operator runs for real (kopf) against the Kubernetes stand-in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from lmaas import kube_names as kn
from lmaas.gateway.observability import GatewayMetrics
from lmaas_operator.crds import API_VERSION as A
from lmaas_operator.kube import KubeClient
from lmaas_operator.live_traffic import LiveTraffic, Snapshot
from lmaas_operator.replanning import ReplanRegistry
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec, PlanStatus
from lmaas_operator.settings import OperatorSettings
from tests.k8s_standin import KubeStandIn
from tests.operator.test_lifecycle import GPU_A100, GPU_L4, cr, operator, ready, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in.*(socket|_SelectorTransport|ClientSession|BaseConnector)"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

NS = "tenant-acme"
DOWN_AFTER_S = 3.0
LLAMA_7B = {
    "source": "/models/llama-2-7b",
    "numParams": 6_740_000_000,
    "numLayers": 32,
    "hiddenSize": 4096,
    "numKvHeads": 32,
    "headDim": 128,
}


def _text(metrics: GatewayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def _requests(metrics: GatewayMetrics, service: str, n: int, prompt: int = 10) -> None:
    for _ in range(n):
        metrics.observe_request_size("llama", service, prompt, 50)


# LiveTraffic -------------------------------------------------------------------------


def test_the_workload_is_each_gateways_own_difference_summed() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    _requests(a, "ns/chat", 5)  # before the window
    before = Snapshot(0.0, {"a": _text(a), "b": _text(b)})
    _requests(a, "ns/chat", 30)
    _requests(b, "ns/chat", 10, prompt=200)
    _requests(b, "ns/other", 99)  # another service
    after = Snapshot(10.0, {"a": _text(a), "b": _text(b), "new": _text(a)})
    workload = LiveTraffic.workload(before, after, {"service": "ns/chat"})
    assert workload is not None and workload.rate == pytest.approx(4.0)
    shares = {x.name: x.share for x in workload.buckets if x.share}
    assert shares == {"i0-25/o25-100": pytest.approx(0.75), "i100-250/o25-100": pytest.approx(0.25)}

    # Gateway b restarted within the window (its counters started again): left out, so a
    # restart is neither a burst nor a drop; "new" was not there at the start: left out.
    restarted = GatewayMetrics()
    _requests(restarted, "ns/chat", 1)
    later = Snapshot(20.0, {"a": _text(a), "b": _text(restarted), "new": _text(a)})
    workload = LiveTraffic.workload(after, later, {"service": "ns/chat"})
    assert workload is not None and workload.rate == 0.0
    assert LiveTraffic.workload(after, after, {"service": "ns/chat"}) is None, "no window"
    assert LiveTraffic.workload(before, Snapshot(5.0, {"c": ""}), {}) is None, "nobody in both"
    silent = Snapshot(30.0, {"a": "# an older gateway: no request sizes\nup 1\n"})
    assert LiveTraffic.workload(Snapshot(0.0, silent.texts), silent, {}) is None, "unknown"


def test_the_gateways_are_the_ready_pods_behind_the_gateway_service(standin: KubeStandIn) -> None:
    kube = KubeClient(httpx.Client(base_url=standin.url, timeout=10))
    settings = OperatorSettings(platform_namespace="lmaas-system", gateway_service="r1-gateway")
    kube.create(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "r1-gateway-x1",
                "namespace": "lmaas-system",
                "labels": {kn.LABEL_SERVICE_NAME: "r1-gateway"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "targetRef": {"kind": "Pod", "name": "gw-a"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.1.0.3"], "conditions": {"terminating": True}},
            ],
        }
    )
    traffic = LiveTraffic(kube, settings)
    try:
        assert traffic.targets() == {"gw-a": "http://10.1.0.1:8000/metrics"}
        unreachable = OperatorSettings(gateway_metrics_url="http://127.0.0.1:9/metrics")
        assert LiveTraffic(kube, unreachable).snapshot() is None, "unknown, not zero"
    finally:
        traffic.close()
        kube.close()


# The registry of Replanners ----------------------------------------------------------


class _Scripted(LiveTraffic):
    """Gateways whose snapshots are given in advance (None = no gateway answered)."""

    def __init__(self, snapshots: list[Snapshot | None]) -> None:
        self.snapshots = snapshots

    def snapshot(self) -> Snapshot | None:
        return self.snapshots.pop(0)


def _replan(registry: ReplanRegistry, in_force: PlanStatus, inputs: str = "h1") -> Any:
    spec = ModelServiceSpec.model_validate(
        {"model": "llama", "slo": {"targetMs": 120}, "scaling": {"minReplicas": 1}}
    )
    gpus = {
        "a100": GPUTypeSpec.model_validate(GPU_A100),
        "l4": GPUTypeSpec.model_validate(GPU_L4),
    }
    return registry.replan(
        key="ns/chat",
        inputs=inputs,
        spec=spec,
        model_name="llama",
        model=ModelSpec.model_validate(LLAMA_7B),
        gpu_types=gpus,
        in_force=in_force,
    )


def test_a_restarted_operator_continues_from_the_plan_in_force() -> None:
    gateway = GatewayMetrics()
    quiet = _text(gateway)
    _requests(gateway, "ns/chat", 1000)  # 100 req/s over the next 10 s
    busy = _text(gateway)
    settings = OperatorSettings(replan_interval_s=1, replan_down_after_s=0)
    # The plan in force was made live for 120 req/s, before the operator restarted.
    in_force = PlanStatus(counts={"l4": 3}, cost_per_hour=2.1, source="live", rate=120.0)
    registry = ReplanRegistry(
        _Scripted([None, Snapshot(0.0, {"g": quiet}), Snapshot(10.0, {"g": busy})]), settings
    )
    assert _replan(registry, in_force) is None, "no gateway answered: unknown, nothing done"
    assert _replan(registry, in_force) is None, "one snapshot: no window yet"
    result = _replan(registry, in_force)
    assert result.observed_rate == pytest.approx(100.0)
    assert result.plan is None, "the traffic it was planned for: the plan stays"

    # A plan in force made for far less traffic is replaced at once, for the traffic seen
    # plus the headroom.
    fresh = ReplanRegistry(
        _Scripted([Snapshot(0.0, {"g": quiet}), Snapshot(10.0, {"g": busy})]), settings
    )
    _replan(fresh, PlanStatus(counts={"l4": 1}, cost_per_hour=0.7, rate=1.0))
    grown = _replan(fresh, PlanStatus(counts={"l4": 1}, cost_per_hour=0.7, rate=1.0))
    assert grown.plan is not None and grown.plan.source == "live"
    assert grown.plan.counts == {"l4": 3} and grown.plan.rate == pytest.approx(115.0)


# The operator ----------------------------------------------------------------------


class FakeGateways:
    """The gateways' /metrics: a real `GatewayMetrics`; each scrape first records `rate`
    requests/s per service for the time since the previous scrape (exact rates, whatever
    the machine's timing)."""

    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.rates: dict[str, float] = {}
        self._owed: dict[str, float] = {}
        self._last = time.monotonic()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def set_rates(self, rates: dict[str, float]) -> None:
        with self._lock:
            self._account()
            self.rates = rates

    def _account(self) -> None:
        now = time.monotonic()
        for service, rate in self.rates.items():
            self._owed[service] = self._owed.get(service, 0.0) + rate * (now - self._last)
            n = int(self._owed[service])
            self._owed[service] -= n
            _requests(self.metrics, service, n)
        self._last = now

    def scrape(self) -> str:
        with self._lock:
            self._account()
            return _text(self.metrics)

    def __enter__(self) -> FakeGateways:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateways(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[FakeGateways]:
    with FakeGateways() as fake:
        monkeypatch.setenv("LMAAS_OPERATOR_GATEWAY_METRICS_URL", fake.url)
        monkeypatch.setenv("LMAAS_OPERATOR_REPLAN_INTERVAL_S", "1")
        monkeypatch.setenv("LMAAS_OPERATOR_REPLAN_DOWN_AFTER_S", str(DOWN_AFTER_S))
        yield fake


def _service(name: str, min_replicas: int) -> dict[str, Any]:
    return cr(
        "ModelService",
        name,
        {
            "model": "llama",
            "slo": {"targetMs": 120},
            "scaling": {"minReplicas": min_replicas, "idleTimeoutSeconds": 2},
            "workload": {"rate": 1},
        },
        NS,
    )


def test_services_follow_live_traffic_up_at_once_down_after_it_lasted(
    standin: KubeStandIn, kube: KubeClient, gateways: FakeGateways
) -> None:
    def status(name: str) -> dict[str, Any]:
        return (kube.get(A, "ModelService", name, NS) or {}).get("status") or {}

    def deployment(name: str) -> dict[str, Any]:
        return kube.get("apps/v1", "Deployment", f"{name}-l4", NS) or {}

    with operator():
        kube.create(cr("GPUType", "a100", GPU_A100))
        kube.create(cr("GPUType", "l4", GPU_L4))
        kube.create(cr("Model", "llama", LLAMA_7B))
        kube.create(cr("Tenant", "acme", {}))
        wait_for("tenant ready", lambda: ready(kube.get(A, "Tenant", "acme")))
        kube.create(_service("steady", 1))
        kube.create(_service("burst", 0))
        for name in ("steady", "burst"):
            wait_for(f"{name} planned", lambda n=name: ready(kube.get(A, "ModelService", n, NS)))
            assert status(name)["plan"]["source"] == "planner"
            assert status(name)["plan"]["counts"] == {"l4": 1}, "1 req/s: one L4"

        # 100 req/s reach each service: re-planned at once, for the rate plus headroom.
        gateways.set_rates({f"{NS}/steady": 100.0, f"{NS}/burst": 100.0})
        high = wait_for(
            "a live plan for the traffic",
            lambda: (
                status("steady")["plan"]["source"] == "live"
                and status("steady")["plan"]["counts"].get("l4", 0) >= 3
                and status("steady")
            ),
            timeout=30,
        )
        count = high["plan"]["counts"]["l4"]
        assert 70 <= high["observedRate"] <= 130 and high["plan"]["rate"] > high["observedRate"]
        assert high["costPerHour"] == pytest.approx(0.7 * count)
        wait_for(
            "steady scaled to the plan", lambda: deployment("steady")["spec"]["replicas"] == count
        )
        annotations = deployment("steady")["metadata"]["annotations"]
        assert annotations[kn.ANNOTATION_PLANNED_REPLICAS] == str(count)
        # The serverless one: the plan goes to the annotation; its replicas stay the
        # activator's (here, nobody scaled it up: still 0).
        wait_for("burst re-planned", lambda: status("burst")["plan"]["source"] == "live")
        burst_plan = status("burst")["plan"]["counts"]["l4"]
        wait_for(
            "burst's planned replicas",
            lambda: (
                deployment("burst")["metadata"]["annotations"][kn.ANNOTATION_PLANNED_REPLICAS]
                == str(burst_plan)
            ),
        )
        assert deployment("burst")["spec"]["replicas"] == 0

        # Traffic wobbling inside the headroom changes nothing.
        for rate in (105.0, 95.0, 105.0, 95.0):
            gateways.set_rates({f"{NS}/steady": rate})
            time.sleep(1.0)
            assert status("steady")["plan"]["counts"]["l4"] == count

        # Far less traffic: the plan shrinks, but only once that has lasted a while.
        gateways.set_rates({f"{NS}/steady": 10.0})
        dropped = time.monotonic()
        wait_for(
            "the plan back to one L4",
            lambda: status("steady")["plan"]["counts"] == {"l4": 1},
            timeout=30,
        )
        assert time.monotonic() - dropped >= DOWN_AFTER_S, "no scale-down before it lasted"
        wait_for("steady scaled down", lambda: deployment("steady")["spec"]["replicas"] == 1)

        # burst has had no traffic for longer than its idle timeout: its scale-to-zero is
        # the activator's; the operator keeps the plan the next cold start scales to.
        assert status("burst")["observedRate"] == 0
        assert status("burst")["plan"]["counts"]["l4"] == burst_plan
        assert deployment("burst")["metadata"]["annotations"][
            kn.ANNOTATION_PLANNED_REPLICAS
        ] == str(burst_plan)
