"""What goes wrong with runtime processes: deaths, broken models, gateways that crash.

Everything here runs real ``lmaas runtime`` processes of the tiny model; deaths are real
signals. "Sent once" is read from the runtimes' own request counters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from openai import APIError, OpenAI

from lmaas.gateway.activator.runtime_process import runtime_records
from tests.activator.conftest import (
    ADMIN_TOKEN,
    MODEL,
    QUESTION,
    Gateway,
    alive,
    metric,
    runtime_requests,
    wait_runtime_ready,
    wait_until,
)
from tests.conftest import free_port
from tests.helpers.servers import wait_http


def test_a_replica_dying_mid_stream_is_not_retried_and_the_next_request_wakes_a_new_one(
    embedded_gateway,
) -> None:
    with embedded_gateway(runtime_prewarm=True) as gw:
        first = wait_runtime_ready(gw)
        client = OpenAI(
            base_url=f"{gw.url}/v1", api_key=gw.tenant_key(), max_retries=0, timeout=240
        )
        stream = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=220, temperature=0, stream=True
        )
        received = []
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                    if len(received) == 2:
                        os.kill(first.pid, signal.SIGKILL)  # dies mid-answer
                assert not (chunk.choices and chunk.choices[0].finish_reason), "not complete"
            failed = None
        except APIError as exc:
            failed = exc
        assert failed is not None and "mid-stream" in str(failed.message), failed
        assert 2 <= len(received) < 220

        # The next request finds the dead replica refusing connections, is offered a new
        # one (it never reached the dead one), and is the only request the new one sees —
        # the broken stream was not sent again.
        answer = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, temperature=0
        )
        assert answer.choices[0].finish_reason in ("length", "stop")
        (second,) = gw.runtimes()
        assert second.pid != first.pid and not alive(first.pid)
        assert runtime_requests(second.url) == 1


def test_a_model_that_cannot_load_fails_fast_with_its_reason(
    embedded_gateway, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with embedded_gateway(base_model=str(broken), activation_timeout_s=120) as gw:
        headers = {"Authorization": f"Bearer {gw.tenant_key()}"}
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=150)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "model_failed"
        assert "could not load its model" in error["message"]
        (runtime,) = gw.runtimes()  # kept, failed, until the next try replaces it
        reason = httpx.get(f"{runtime.url}/readyz", timeout=5).json()["error"]
        assert reason and reason in error["message"], "the runtime's own reason"
        assert int(r.headers["Retry-After"]) >= 1
        assert metric(gw.metrics(), "lmaas_activator_activation_failures_total") == 1
        # A retry right away is refused at once, without another load.
        again = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert again.status_code == 503 and again.json()["error"]["code"] == "model_failed"
        assert metric(gw.metrics(), "lmaas_activator_activation_failures_total") == 1


def test_a_gateway_starting_stops_the_runtime_a_predecessor_left_behind(
    embedded_gateway, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    run_dir = home / "run"
    run_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    port = free_port()
    env.update(LMAAS_HOME=str(home), LMAAS_RUNTIME_PORT=str(port), LMAAS_BASE_MODEL="/nowhere")
    orphan = subprocess.Popen(
        [sys.executable, "-m", "lmaas", "runtime"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        (run_dir / f"runtime-{port}.pid").write_text(f"{orphan.pid}\n")
        with embedded_gateway(home=home):
            assert orphan.wait(timeout=30) is not None
            assert runtime_records(run_dir) == []
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def _gateway_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lmaas", "gateway"], env=env, stdout=out, stderr=out
        )


def test_a_gateway_killed_mid_cold_start_leaves_no_runtime_behind(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    env.update(
        LMAAS_HOME=str(home),
        LMAAS_PORT=str(port),
        LMAAS_BASE_MODEL=str(tiny_model_dir),
        LMAAS_MODEL_NAME=MODEL,
        LMAAS_ADMIN_TOKEN=ADMIN_TOKEN,
        LMAAS_SCALE_BACKEND="embedded",
        LMAAS_RUNTIME_PREWARM="true",
    )
    log = tmp_path / "gateway.log"
    gateways = [_gateway_process(env, log)]
    try:
        (cold,) = wait_until(lambda: runtime_records(home / "run"), 60, "the pre-warm cold start")
        assert alive(cold.pid)
        gateways[0].kill()  # the gateway crashes while its runtime is loading
        gateways[0].wait(timeout=30)

        gateways.append(_gateway_process(env, log))
        wait_until(lambda: not alive(cold.pid), 30, "the orphaned runtime to stop")
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", timeout_s=60)
        gw = Gateway(url, settings=None)  # type: ignore[arg-type]
        key = gw.tenant_key()
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": QUESTION, "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
            timeout=240,
        )
        assert r.status_code == 200, r.text
        (warm,) = [r for r in runtime_records(home / "run") if alive(r.pid)]
        assert warm.pid != cold.pid

        gateways[1].send_signal(signal.SIGTERM)  # a clean stop takes its runtime along
        assert gateways[1].wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it
        assert "stopped runtime pid" in log.read_text()
        assert not alive(warm.pid)
        assert runtime_records(home / "run") == []
    finally:
        for process in gateways:
            if process.poll() is None:
                process.kill()
                process.wait()
        for record in runtime_records(home / "run"):
            if alive(record.pid):
                os.kill(record.pid, signal.SIGKILL)
