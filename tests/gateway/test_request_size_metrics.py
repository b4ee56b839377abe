"""The request-size metrics the planner reads, from a real gateway and runtime.

Every finished request is recorded once with the exact token counts the runtime reported,
in the planner's size buckets; `lmaas plan --metrics` plans from a running gateway's
/metrics (two scrapes, requests in between).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.gateway.observability import SIZE_EDGES, size_bucket
from lmaas.placement.metrics import parse_scrape, workload_between
from lmaas.placement.workload import MELANGE_EDGES
from tests.conftest import free_port
from tests.gateway.conftest import MODEL, Api, gateway_settings
from tests.helpers.servers import serve_in_thread


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_bucket_edges_are_the_planners_grid() -> None:
    assert SIZE_EDGES[:-1] == tuple(float(e) for e in MELANGE_EDGES[1:])
    assert SIZE_EDGES[-1] == float("inf")
    assert [size_bucket(n) for n in (1, 25, 26, 2000, 2001)] == [
        "25.0",
        "25.0",
        "100.0",
        "2000.0",
        "+Inf",
    ]


def test_each_finished_request_is_recorded_once_with_its_exact_sizes(api: Api) -> None:
    headers = api.tenant("acme")
    usages = []
    for prompt, max_tokens, stream in (("hi", 3, False), ("a longer prompt " * 8, 5, True)):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            with api.client.stream("POST", "/v1/chat/completions", headers=headers, json=body) as r:
                lines = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
            usages.append(lines[-1]["usage"])
        else:
            usages.append(
                api.client.post("/v1/chat/completions", headers=headers, json=body).json()["usage"]
            )
    # A refused request (unknown model) is not a finished request.
    api.client.post("/v1/chat/completions", headers=headers, json={**body, "model": "nope"})
    text = api.client.get("/metrics").text

    prompt_sum = samples(text, "lmaas_request_prompt_tokens_sum")
    completion_sum = samples(text, "lmaas_request_completion_tokens_sum")
    labels = (("model", MODEL), ("service", ""))  # fixed runtime URLs: no scaled service
    assert prompt_sum == {labels: sum(u["prompt_tokens"] for u in usages)}
    assert completion_sum == {labels: sum(u["completion_tokens"] for u in usages)}
    assert samples(text, "lmaas_request_prompt_tokens_count") == {labels: 2}
    joint = samples(text, "lmaas_request_size_total")
    expected: dict[tuple[str, str], float] = {}
    for u in usages:
        key = (size_bucket(u["prompt_tokens"]), size_bucket(u["completion_tokens"]))
        expected[key] = expected.get(key, 0) + 1
    assert len(joint) == len(SIZE_EDGES) ** 2, "the whole grid exists (its edges are read)"
    cells = {(dict(k)["prompt_le"], dict(k)["completion_le"]): v for k, v in joint.items() if v}
    assert cells == expected
    # The planner reads them as they are: 2 requests in a 2-second window = 1 req/s.
    workload = workload_between(parse_scrape(""), parse_scrape(text, {"model": MODEL}), 2.0)
    assert workload.rate == pytest.approx(1.0)


class _AccessLog(logging.Handler):
    """Counts the gateway's access-log lines for GET /metrics (the planner's scrapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.scrapes = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("GET /metrics "):
            self.scrapes += 1


def test_lmaas_plan_reads_a_running_gateways_metrics(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    from lmaas.gateway import create_app

    settings = gateway_settings(tmp_path, database_url, runtime_url)
    access = _AccessLog()
    logger = logging.getLogger("lmaas.gateway.access")
    logger.addHandler(access)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    window = 6.0
    try:
        with serve_in_thread(create_app(settings), free_port()) as url:
            admin = {"Authorization": "Bearer lmaas-admin-test-token"}
            httpx.post(f"{url}/admin/tenants", json={"name": "acme"}, headers=admin)
            key = httpx.post(f"{url}/admin/tenants/acme/keys", headers=admin).json()["key"]
            result: dict[str, object] = {}

            def plan() -> None:
                result["out"] = CliRunner().invoke(
                    app,
                    [
                        "plan",
                        "--metrics",
                        f"{url}/metrics",
                        "--window",
                        str(window),
                        "--label",
                        f"model={MODEL}",
                        "--json",
                    ],
                )

            planner = threading.Thread(target=plan)
            planner.start()
            deadline = time.monotonic() + 30
            while access.scrapes < 1:  # the first scrape is done: requests count from now
                assert time.monotonic() < deadline, "the planner never scraped"
                time.sleep(0.02)
            sent = time.monotonic()
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(3):
                r = httpx.post(
                    f"{url}/v1/chat/completions",
                    json={**body, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                )
                assert r.status_code == 200, r.text
            assert time.monotonic() - sent < window, "the requests outlasted the window"
            planner.join(timeout=60)
    finally:
        logger.removeHandler(access)
        logger.setLevel(old_level)
    out = result["out"]
    assert out.exit_code == 0, out.output  # type: ignore[attr-defined]
    plan = json.loads(out.stdout)  # type: ignore[attr-defined]
    assert 3 / (window + 2) <= plan["rate"] <= 3 / window * 1.001
    assert sum(plan["counts"].values()) >= 1 and plan["cost_per_hour"] > 0
