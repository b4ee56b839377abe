"""Workloads from Prometheus metrics, as the gateway will expose them, and `lmaas plan --metrics`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.placement.metrics import MetricsUnavailable, parse_scrape, workload_between

EDGES = (25, 100, 250, 500, 1000, 2000)


class Gateway:
    """The request-size metrics the gateway exports (real prometheus_client objects)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.prompt = Histogram(
            "lmaas_request_prompt_tokens", "", ["model"], buckets=EDGES, registry=self.registry
        )
        self.completion = Histogram(
            "lmaas_request_completion_tokens", "", ["model"], buckets=EDGES, registry=self.registry
        )

    def request(self, model: str, prompt: int, completion: int) -> None:
        self.prompt.labels(model=model).observe(prompt)
        self.completion.labels(model=model).observe(completion)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_rate_and_shares_come_from_the_difference_of_two_scrapes() -> None:
    gateway = Gateway()
    for _ in range(50):  # before the window: must not count
        gateway.request("llama", 3000, 3000)
    before = parse_scrape(gateway.text(), {"model": "llama"})
    for _ in range(30):
        gateway.request("llama", 10, 50)  # i0-25 × o25-100
    for _ in range(10):
        gateway.request("llama", 200, 50)  # i100-250 × o25-100
    for _ in range(99):
        gateway.request("other-model", 200, 50)  # another model: filtered out
    after = parse_scrape(gateway.text(), {"model": "llama"})
    workload = workload_between(before, after, 10.0)
    assert workload.rate == pytest.approx(4.0)
    shares = {b.name: b.share for b in workload.buckets}
    assert shares["i0-25/o25-100"] == pytest.approx(0.75)
    assert shares["i100-250/o25-100"] == pytest.approx(0.25)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_a_joint_size_counter_is_used_as_is() -> None:
    registry = CollectorRegistry()
    joint = Counter("lmaas_request_size", "", ["prompt_le", "completion_le"], registry=registry)
    joint.labels(prompt_le="100", completion_le="100").inc(0)
    before = parse_scrape(generate_latest(registry).decode())
    joint.labels(prompt_le="100", completion_le="100").inc(6)
    joint.labels(prompt_le="1000", completion_le="500").inc(2)
    after = parse_scrape(generate_latest(registry).decode())
    workload = workload_between(before, after, 2.0)
    assert workload.rate == pytest.approx(4.0)
    shares = {b.name: b.share for b in workload.buckets}
    assert shares == {
        "i0-100/o0-100": pytest.approx(0.75),
        "i0-100/o100-500": 0.0,
        "i100-1000/o0-100": 0.0,
        "i100-1000/o100-500": pytest.approx(0.25),
    }


def test_missing_histograms_are_explained() -> None:
    with pytest.raises(MetricsUnavailable, match="lmaas_request_prompt_tokens"):
        workload_between(parse_scrape("# nothing\n"), parse_scrape("# nothing\n"), 1.0)


class _Server:
    """Serves the gateway's metrics over HTTP; every scrape finds 20 more requests."""

    def __init__(self, gateway: Gateway | None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.gateway is not None:
                    for _ in range(20):
                        outer.gateway.request("llama", 60, 120)
                body = (outer.gateway.text() if outer.gateway else "up 1\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.gateway = gateway
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_plan_from_live_metrics() -> None:
    with _Server(Gateway()) as server:
        result = CliRunner().invoke(
            app,
            [
                "plan",
                "--metrics",
                server.url,
                "--window",
                "0.5",
                "--label",
                "model=llama",
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert 0 < plan["rate"] <= 20 / 0.5 * 1.01  # 20 requests within the window
    assert sum(plan["counts"].values()) >= 1
    served = {b for buckets in plan["buckets_by_type"].values() for b in buckets}
    assert "i25-100/o100-250" in served


def test_plan_from_metrics_without_size_histograms_says_so() -> None:
    with _Server(None) as server:
        result = CliRunner().invoke(app, ["plan", "--metrics", server.url, "--window", "0.1"])
    assert result.exit_code == 1
    assert "no histogram lmaas_request_prompt_tokens" in result.output
