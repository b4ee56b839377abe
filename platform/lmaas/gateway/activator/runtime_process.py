"""One ``lmaas runtime`` process of the embedded backend, its pid file, and orphan cleanup.

Each process runs in its own session (a terminal's Ctrl-C reaches the gateway, which then
stops it after draining), gets SIGTERM from the kernel if the gateway dies without stopping
it (Linux), and is recorded in ``$LMAAS_HOME/run/runtime-<port>.pid``. A gateway starting
on the same home stops any runtime a predecessor left behind (`reap_orphans`); `lmaas up`
reads the same files to show the runtime's progress (`runtime_records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["RuntimeProcess", "RuntimeRecord", "reap_orphans", "runtime_records"]

log = logging.getLogger(__name__)

_PREFIX = "runtime-"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the runtime gets SIGTERM when the gateway that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class RuntimeRecord:
    """A runtime process as its pid file records it."""

    pid: int
    port: int
    path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def runtime_records(run_dir: Path) -> list[RuntimeRecord]:
    """The runtime processes recorded under `run_dir` (malformed files skipped)."""
    records = []
    for path in sorted(run_dir.glob(f"{_PREFIX}*.pid")):
        try:
            port = int(path.stem.removeprefix(_PREFIX))
            pid = int(path.read_text().strip())
        except (ValueError, OSError):
            continue
        records.append(RuntimeRecord(pid, port, path))
    return records


def _is_running_runtime(pid: int) -> bool:
    """`pid` is alive (not a zombie) and runs ``lmaas runtime`` (never kill a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return b"runtime" in argv and any(b"lmaas" in a for a in argv)


def reap_orphans(run_dir: Path, *, grace_s: float = 10.0) -> list[int]:
    """Stop the runtimes a previous gateway on this home left running; returns their pids."""
    stopped = []
    for record in runtime_records(run_dir):
        if _is_running_runtime(record.pid):
            log.warning("stopping runtime pid %d left behind by a previous gateway", record.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _is_running_runtime(record.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _is_running_runtime(record.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGKILL)
            stopped.append(record.pid)
        record.path.unlink(missing_ok=True)
    return stopped


class RuntimeProcess:
    """A runtime started by the gateway; watch it with `alive`, end it with `stop`."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        port: int,
        pidfile: Path,
        output: IO[bytes] | None,
    ) -> None:
        self.process = process
        self.port = port
        self.pidfile = pidfile
        self.stopping = False
        self._output = output
        self._watch = asyncio.create_task(self._watch_exit(), name=f"lmaas-runtime-{port}")

    @classmethod
    async def spawn(
        cls, *, port: int, env: dict[str, str], run_dir: Path, log_path: Path | None
    ) -> RuntimeProcess:
        output = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            output = open(log_path, "ab")  # noqa: SIM115 - closed when the process exits
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lmaas",
                "runtime",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError:
            if output is not None:
                output.close()
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        pidfile = run_dir / f"{_PREFIX}{port}.pid"
        pidfile.write_text(f"{process.pid}\n")
        log.info("started runtime pid %d on port %d", process.pid, port)
        return cls(process, port, pidfile, output)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self.stopping

    async def _watch_exit(self) -> None:
        code = await self.process.wait()
        if not self.stopping:
            log.warning(
                "runtime pid %d (port %d) exited with status %d; the next request starts another",
                self.pid,
                self.port,
                code,
            )
        self.pidfile.unlink(missing_ok=True)
        if self._output is not None:
            self._output.close()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM (it finishes what it is doing), SIGKILL after `grace_s` seconds."""
        self.stopping = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(self._watch), grace_s)
            except TimeoutError:
                log.warning("runtime pid %d did not stop in %.0fs: killing it", self.pid, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        await self._watch
        log.info("stopped runtime pid %d (port %d)", self.pid, self.port)
