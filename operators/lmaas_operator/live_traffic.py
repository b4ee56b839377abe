"""The live traffic of each service, read from the gateways' request-size metrics.

Every gateway pod exports ``lmaas_request_*`` series (`lmaas.placement.metrics` names them)
labelled by model and by the service that ran each request (``namespace/model-service``).
`LiveTraffic` scrapes every gateway — the pods behind the gateway Service, found through
its EndpointSlices in the platform namespace, or the URLs of
``LMAAS_OPERATOR_GATEWAY_METRICS_URL`` — at most once per `min_interval_s`, and keeps each
scrape per pod. The workload of a service between two snapshots is the sum over the pods
present in both, each pod's own difference: a pod that came or went, or restarted (its
counters went back), is left out of that window instead of being read as a burst or a
drop. No gateway answering, or none exporting the request sizes (another version), gives
no workload at all: unknown traffic is never read as no traffic. The gateways must run the
Kubernetes scale backend, which labels each request with its service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from lmaas import kube_names as kn
from lmaas.placement.metrics import (
    JOINT,
    MetricsUnavailable,
    Scrape,
    parse_scrape,
    workload_between,
)
from lmaas.placement.workload import MELANGE_EDGES, Workload
from lmaas_operator.kube import KubeClient, KubeError
from lmaas_operator.settings import OperatorSettings

__all__ = ["LiveTraffic", "Snapshot", "idle_workload"]

log = logging.getLogger(__name__)

_EDGES = (*MELANGE_EDGES, 2 * MELANGE_EDGES[-1])  # the gateway's grid, +Inf as 2× the last


@dataclass(frozen=True)
class Snapshot:
    """The text of each gateway's /metrics (by pod or URL) at one moment."""

    at: float
    texts: dict[str, str] = field(default_factory=dict)


def idle_workload() -> Workload:
    """No requests, on the gateway's size grid."""
    n = len(_EDGES) - 1
    return Workload.from_grid(0.0, _EDGES, _EDGES, [[0.0] * n for _ in range(n)])


def _sum(scrapes: list[Scrape]) -> Scrape:
    total: Scrape = {}
    for scrape in scrapes:
        for name, samples in scrape.items():
            into = total.setdefault(name, {})
            for labels, value in samples.items():
                into[labels] = into.get(labels, 0.0) + value
    return total


def _requests(scrape: Scrape) -> float:
    return sum(scrape.get(JOINT, {}).values())


class LiveTraffic:
    """Scrapes the gateways and turns two snapshots into a service's workload."""

    def __init__(
        self,
        kube: KubeClient,
        settings: OperatorSettings,
        *,
        http: httpx.Client | None = None,
        min_interval_s: float = 5.0,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.http = http or httpx.Client(timeout=5.0)
        self.min_interval_s = min_interval_s
        self._latest: Snapshot | None = None
        self._lock = threading.Lock()

    def targets(self) -> dict[str, str]:
        """Where the gateways' metrics are: name (pod, or the URL) → /metrics URL."""
        if self.settings.gateway_metrics_url:
            urls = [u.strip() for u in self.settings.gateway_metrics_url.split(",") if u.strip()]
            return {u: u for u in urls}
        slices = self.kube.list(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            self.settings.platform_namespace,
            labels={kn.LABEL_SERVICE_NAME: self.settings.gateway_service},
        )
        found: dict[str, str] = {}
        for endpoint_slice in slices:
            ports = endpoint_slice.get("ports") or []
            port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
            if port is None and ports:
                port = ports[0].get("port")
            if port is None:
                continue
            ipv6 = endpoint_slice.get("addressType") == "IPv6"
            for endpoint in endpoint_slice.get("endpoints") or []:
                conditions = endpoint.get("conditions") or {}
                if conditions.get("ready") is False or conditions.get("terminating") is True:
                    continue
                for address in (endpoint.get("addresses") or [])[:1]:
                    host = f"[{address}]" if ipv6 else address
                    name = (endpoint.get("targetRef") or {}).get("name") or host
                    found[name] = f"http://{host}:{port}/metrics"
        return found

    def snapshot(self) -> Snapshot | None:
        """The gateways' metrics now (shared by callers within `min_interval_s`); None when
        no gateway could be read."""
        with self._lock:
            latest = self._latest
            if latest is not None and time.monotonic() - latest.at < self.min_interval_s:
                return latest
            try:
                targets = self.targets()
            except KubeError as exc:
                log.warning("cannot find the gateways: %s", exc)
                return None
            texts: dict[str, str] = {}
            for name, url in sorted(targets.items()):
                try:
                    response = self.http.get(url)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    log.warning("cannot read the metrics of gateway %s: %s", name, exc)
                    continue
                texts[name] = response.text
            if not texts:
                return None
            self._latest = Snapshot(time.monotonic(), texts)
            return self._latest

    @staticmethod
    def workload(before: Snapshot, after: Snapshot, labels: Mapping[str, str]) -> Workload | None:
        """The traffic matching `labels` between two snapshots (None: no window to read)."""
        seconds = after.at - before.at
        if seconds <= 0:
            return None
        olds, news = [], []
        for name in sorted(set(before.texts) & set(after.texts)):
            if f"# TYPE {JOINT} " not in after.texts[name]:
                continue  # not a gateway that exports request sizes: it tells nothing
            try:
                old = parse_scrape(before.texts[name], labels)
                new = parse_scrape(after.texts[name], labels)
            except MetricsUnavailable as exc:
                log.warning("gateway %s: %s", name, exc)
                continue
            if _requests(new) < _requests(old):
                continue  # it restarted within the window: its counters started again
            olds.append(old)
            news.append(new)
        if not news:
            return None
        old, new = _sum(olds), _sum(news)
        if _requests(new) - _requests(old) <= 0:
            return idle_workload()
        return workload_between(old, new, seconds)

    def close(self) -> None:
        self.http.close()
