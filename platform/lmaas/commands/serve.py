"""`lmaas gateway`, `lmaas runtime`, `lmaas worker` (one process each) and `lmaas up` (all three).

The single-process commands read the settings (LMAAS_*), configure logging and run until
SIGTERM/SIGINT, finishing in-flight work first (uvicorn's graceful shutdown; Celery's warm
shutdown).
"""

from __future__ import annotations

from typing import Annotated

import typer

from lmaas.commands.common import setup_logging

__all__ = ["gateway", "runtime", "up", "worker"]

PortOption = Annotated[
    int | None, typer.Option("--port", help="port to listen on (default LMAAS_PORT, 8000)")
]


def gateway(port: PortOption = None) -> None:
    """Run the gateway (tenant and admin API) in this process."""
    import uvicorn

    from lmaas.config import Settings
    from lmaas.gateway import create_app

    settings = Settings() if port is None else Settings(port=port)
    setup_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,  # lmaas.gateway.access logs requests, without headers
        log_config=None,
        timeout_graceful_shutdown=30,
    )


def runtime() -> None:
    """Run a model runtime (LMAAS_BASE_MODEL with LMAAS_ENGINE) in this process."""
    import uvicorn

    from lmaas.config import get_settings
    from lmaas.runtime import create_app

    settings = get_settings()
    setup_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.runtime_host,
        port=settings.runtime_port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="tasks run at once")] = 1,
) -> None:
    """Run a Celery worker for lmaas's background tasks in this process."""
    from lmaas.config import get_settings
    from lmaas.worker import run_worker

    settings = get_settings()
    setup_logging(settings.log_level)
    run_worker(settings, concurrency=concurrency)


def up(
    port: PortOption = None,
    show_logs: Annotated[
        bool, typer.Option("--show-logs", help="print the processes' logs here too")
    ] = False,
    grace: Annotated[
        float, typer.Option(help="seconds each process gets to finish its work when stopping")
    ] = 30.0,
) -> None:
    """Start the embedded platform: gateway, runtime and worker, supervised."""
    from lmaas.commands.supervisor import run_embedded

    raise typer.Exit(run_embedded(port=port, show_logs=show_logs, grace_s=grace))
