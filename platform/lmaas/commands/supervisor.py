"""`lmaas up`: run gateway, runtime and worker as supervised child processes.

The children run ``python -m lmaas <role>`` in their own session (a terminal's Ctrl-C
reaches only the supervisor, which then stops them in order), with their logs in
``$LMAAS_HOME/logs/<role>.log`` and their pids in ``$LMAAS_HOME/run/<role>.pid``. A child
that dies is restarted after a backoff (1 s doubling to 30 s; reset after a minute of good
health). Stopping (Ctrl-C, SIGTERM) sends SIGTERM to the gateway first — it finishes the
requests in flight — then to the runtime and the worker (which finishes its task); a child
still running after the grace period is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from rich.panel import Panel

from lmaas.commands.common import console, err_console, fail, lmaas_command

__all__ = ["Child", "Supervisor", "run_embedded"]

_MAX_BACKOFF_S = 30.0
_HEALTHY_AFTER_S = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM if the supervisor dies without stopping it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 1.0
    restart_at: float | None = None
    restarts: int = 0
    log_handle: object | None = field(default=None, repr=False)


class Supervisor:
    """Starts, watches, restarts and stops a set of child processes."""

    def __init__(
        self,
        children: list[Child],
        *,
        env: dict[str, str],
        log_dir: Path | None,
        run_dir: Path,
        grace_s: float = 30.0,
    ) -> None:
        self.children = children
        self.env = env
        self.log_dir = log_dir
        self.run_dir = run_dir
        self.grace_s = grace_s

    def log_path(self, child: Child) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{child.name}.log"

    def start(self, child: Child) -> None:
        output = None
        path = self.log_path(child)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            output = open(path, "ab")  # noqa: SIM115 - closed when the child is stopped
        child.process = subprocess.Popen(
            child.argv,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child.log_handle = output
        child.started_at = time.monotonic()
        child.restart_at = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / f"{child.name}.pid").write_text(f"{child.process.pid}\n")

    def start_all(self) -> None:
        for child in self.children:
            self.start(child)

    def check(self) -> list[tuple[Child, int]]:
        """Restart due children; returns the children found dead now, with exit codes."""
        died = []
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.restarts += 1
                    self.start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            if now - child.started_at > _HEALTHY_AFTER_S:
                child.backoff_s = 1.0
            child.process = None
            self._close_log(child)
            child.restart_at = now + child.backoff_s
            died.append((child, code))
            child.backoff_s = min(child.backoff_s * 2, _MAX_BACKOFF_S)
        return died

    def _close_log(self, child: Child) -> None:
        if child.log_handle is not None:
            child.log_handle.close()  # type: ignore[attr-defined]
            child.log_handle = None

    def _terminate(self, group: list[Child]) -> None:
        running = [
            (c, c.process) for c in group if c.process is not None and c.process.poll() is None
        ]
        for _, process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child, process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                err_console.print(
                    f"[yellow]{child.name} did not stop in {self.grace_s:.0f}s: killing it[/]"
                )
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        """Gateway first (drains requests), then everything else."""
        first = [c for c in self.children if c.name == "gateway"]
        rest = [c for c in self.children if c.name != "gateway"]
        self._terminate(first)
        self._terminate(rest)
        for child in self.children:
            child.process = None
            child.restart_at = None
            self._close_log(child)
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / f"{child.name}.pid").unlink()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 8192))
        return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])


def _runtime_phase(url: str) -> tuple[bool, str, str | None]:
    """(ready, phase, error) of the runtime at `url`."""
    try:
        body = httpx.get(f"{url}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False, "starting", None
    return bool(body.get("ready")), str(body.get("phase", "starting")), body.get("error")


def _gateway_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _print_banner(url: str, model: str, token: str | None, home: Path) -> None:
    cmd = lmaas_command()
    token_line = (
        f"admin token (shown once; kept in {home / 'admin-token'}):\n  [bold]{token}[/]"
        if token
        else f"admin token: in {home / 'admin-token'} (or LMAAS_ADMIN_TOKEN)"
    )
    console.print(
        Panel(
            f"lmaas serves [bold]{model}[/] at [bold cyan]{url}[/]\n{token_line}\n"
            f"logs: {home / 'logs'}    stop: Ctrl-C",
            title="lmaas is up",
            expand=False,
        )
    )
    snippet = (
        'python -c "from openai import OpenAI; '
        f"c = OpenAI(base_url='{url}/v1', api_key='KEY'); "
        f"print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', "
        "'content': 'What is the capital of France?'}]).choices[0].message.content)\""
    )
    console.print("next, in another terminal:")
    for line in (f"{cmd} tenant create acme", f"{cmd} key create acme   # prints KEY", snippet):
        console.print(f"  {line}", soft_wrap=True, markup=False)


class _StopFlag:
    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.event.set()


def run_embedded(*, port: int | None, show_logs: bool, grace_s: float) -> int:
    """Run the embedded platform until stopped; returns the exit status."""
    from lmaas.config import Settings
    from lmaas.store import Database

    settings = Settings() if port is None else Settings(port=port)
    try:
        model_path = settings.resolved_base_model
    except RuntimeError as exc:
        fail(str(exc))
    for what, host, p, var in (
        ("gateway", settings.host, settings.port, "--port / LMAAS_PORT"),
        ("runtime", settings.runtime_host, settings.runtime_port, "LMAAS_RUNTIME_PORT"),
    ):
        if not _port_free(host, p):
            fail(
                f"port {p} ({what}) is already in use on {host}", hint=f"choose another with {var}"
            )

    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    with console.status("preparing the database…"):
        Database(settings.resolved_database_url).dispose()
    had_token = settings.admin_token is not None or (home / "admin-token").is_file()
    token = settings.resolved_admin_token()

    env = dict(os.environ, LMAAS_HOME=str(home), LMAAS_PORT=str(settings.port))
    python = [sys.executable, "-m", "lmaas"]
    supervisor = Supervisor(
        [Child(role, [*python, role]) for role in ("runtime", "gateway", "worker")],
        env=env,
        log_dir=None if show_logs else home / "logs",
        run_dir=home / "run",
        grace_s=grace_s,
    )
    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    gateway_url = f"http://{settings.host}:{settings.port}"
    runtime_url = f"http://127.0.0.1:{settings.runtime_port}"
    try:
        supervisor.start_all()
        with console.status(f"starting lmaas with {model_path.name}…") as status:
            while not stop.event.is_set():
                _report_deaths(supervisor)
                ready, phase, error = _runtime_phase(runtime_url)
                if error:
                    err_console.print(f"[bold red]the model could not be loaded:[/] {error}")
                    return 1
                status.update(f"runtime: {phase}…")
                if ready and _gateway_up(gateway_url):
                    break
                stop.event.wait(0.3)
        if stop.event.is_set():
            return 0
        _print_banner(gateway_url, settings.model_name, None if had_token else token, home)
        while not stop.event.wait(0.5):
            _report_deaths(supervisor)
        return 0
    finally:
        with console.status("stopping (finishing work in flight)…"):
            supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print("lmaas stopped")


def _report_deaths(supervisor: Supervisor) -> None:
    for child, code in supervisor.check():
        delay = child.restart_at - time.monotonic() if child.restart_at else 0
        err_console.print(
            f"[yellow]{child.name} exited with status {code}; restarting in {max(0, delay):.0f}s[/]"
        )
        tail = _tail(supervisor.log_path(child))
        if tail:
            err_console.print(f"[dim]{tail}[/]")
