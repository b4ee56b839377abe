"""`lmaas up` as a user runs it: a subprocess on free ports, driven with the official clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers.servers import wait_http


@dataclass
class Platform:
    url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    output: Path

    def lmaas(self, *args: str) -> str:
        """Run an `lmaas` command against this platform's LMAAS_HOME; returns stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "lmaas", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    def pid(self, role: str) -> int:
        return int((self.home / "run" / f"{role}.pid").read_text())

    def logs(self) -> str:
        texts = [p.read_text(errors="replace") for p in sorted((self.home / "logs").glob("*.log"))]
        return self.output.read_text(errors="replace") + "\n".join(texts)


def start_platform(tmp_path: Path, *, port: int | None = None, **env_overrides: str) -> Platform:
    port = port or free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "lmaas-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    env.update(
        LMAAS_HOME=str(home),
        LMAAS_RUNTIME_PORT=str(free_port()),
        LMAAS_REPLICA_WAIT_S="120",
        COLUMNS="200",
        **env_overrides,
    )
    output = tmp_path / "up.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lmaas", "up", "--port", str(port), "--grace", "20"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Platform(f"http://127.0.0.1:{port}", home, env, process, output)


def wait_up(platform: Platform, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while "lmaas is up" not in platform.output.read_text(errors="replace"):
        if platform.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"lmaas up did not come up:\n{platform.logs()[-4000:]}")
        time.sleep(0.3)
    wait_http(f"{platform.url}/healthz", timeout_s=30)


def stop(platform: Platform) -> int:
    if platform.process.poll() is None:
        platform.process.send_signal(signal.SIGINT)
        try:
            return platform.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            platform.process.kill()
            platform.process.wait()
            raise
    return platform.process.returncode


@pytest.fixture
def tiny_platform(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Platform]:
    platform = start_platform(
        tmp_path, LMAAS_BASE_MODEL=str(tiny_model_dir), LMAAS_MODEL_NAME="tiny-llama"
    )
    try:
        wait_up(platform, timeout_s=180)
        yield platform
    finally:
        stop(platform)
