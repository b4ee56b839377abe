"""`lmaas jobs …`: fine-tune as a tenant, over the gateway's HTTP API (OpenAI-compatible).

These commands are a client: they need a running gateway (``--url``, default this machine's
``LMAAS_HOST:LMAAS_PORT``) and a tenant's API key (``--api-key`` or ``LMAAS_API_KEY``).
`create` uploads the data file and creates the job; `follow` shows a progress bar (step of
total, loss) until the job ends; `list` and `cancel` do what they say.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lmaas.commands.common import console, fail

__all__ = ["jobs_app"]

jobs_app = typer.Typer(
    help="Fine-tune models as a tenant: create, list, follow and cancel jobs.",
    no_args_is_help=True,
)

TERMINAL = ("succeeded", "failed", "cancelled")

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LMAAS_GATEWAY_URL",
        help="The gateway's base URL; default http://127.0.0.1:$LMAAS_PORT.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str,
    typer.Option("--api-key", envvar="LMAAS_API_KEY", help="Your tenant's API key (sk-lmaas-…)."),
]


class Gateway:
    """The few calls the commands make; every error ends the command with its message."""

    def __init__(self, url: str | None, api_key: str) -> None:
        if url is None:
            from lmaas.config import get_settings

            settings = get_settings()
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
            url = f"http://{host}:{settings.port}"
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120
        )

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(
                f"cannot reach the gateway at {self.url}: {exc}",
                hint="start it with `lmaas up`, or pass --url / set LMAAS_GATEWAY_URL",
            )
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            fail(f"{response.status_code}: {message}")
        return response.json()


def _step(job: dict[str, Any]) -> str:
    total = job.get("total_steps")
    return f"{job.get('step', 0)}/{total}" if total else "-"


@jobs_app.command("create")
def create(
    file: Annotated[Path, typer.Option("--file", exists=True, dir_okay=False, help="Chat JSONL.")],
    api_key: ApiKey,
    model: Annotated[
        str | None, typer.Option(help="Base model; default the deployment's.", show_default=False)
    ] = None,
    method: Annotated[str, typer.Option(help="lora (an adapter) or qft (a full model).")] = "lora",
    suffix: Annotated[str | None, typer.Option(help="Part of the result's name.")] = None,
    n_epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the data.")] = None,
    validation_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Chat JSONL to evaluate on.")
    ] = None,
    follow_job: Annotated[
        bool, typer.Option("--follow", help="Then follow the job until it ends.")
    ] = False,
    url: Url = None,
) -> None:
    """Upload a chat JSONL file and create a fine-tuning job on it."""
    if method not in ("lora", "qft"):
        fail(f"--method must be lora or qft, not {method!r}")
    with Gateway(url, api_key) as gateway:
        _create(gateway, file, model, method, suffix, n_epochs, validation_file, follow_job)


def _create(
    gateway: Gateway,
    file: Path,
    model: str | None,
    method: str,
    suffix: str | None,
    n_epochs: int | None,
    validation_file: Path | None,
    follow_job: bool,
) -> None:
    def upload(path: Path) -> str:
        with open(path, "rb") as fh:
            uploaded = gateway.call(
                "POST",
                "/v1/files",
                files={"file": (path.name, fh, "application/jsonl")},
                data={"purpose": "fine-tune"},
            )
        console.print(f"uploaded {path.name}: {uploaded['id']} ({uploaded['num_lines']} examples)")
        return uploaded["id"]

    if model is None:
        from lmaas.config import get_settings

        model = get_settings().model_name
    body: dict[str, Any] = {"model": model, "training_file": upload(file), "method": method}
    if validation_file is not None:
        body["validation_file"] = upload(validation_file)
    if suffix is not None:
        body["suffix"] = suffix
    if n_epochs is not None:
        body["hyperparameters"] = {"n_epochs": n_epochs}
    job = gateway.call("POST", "/v1/fine_tuning/jobs", json=body)
    console.print(f"created {method} job [bold]{job['id']}[/] on {model} ({job['status']})")
    if follow_job:
        _follow_to_end(gateway, job["id"], interval=1.0)
    else:
        console.print(f"follow it: [bold]lmaas jobs follow {job['id']}[/]")


@jobs_app.command("list")
def list_jobs(
    api_key: ApiKey,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    url: Url = None,
) -> None:
    """Your fine-tuning jobs, newest first."""
    with Gateway(url, api_key) as gateway:
        page = gateway.call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})
    table = Table("id", "model", "method", "status", "step", "result", "created")
    for job in page["data"]:
        table.add_row(
            job["id"],
            job["model"],
            job.get("training_method", "lora"),
            job["status"],
            _step(job),
            job.get("fine_tuned_model") or "",
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(job["created_at"])),
        )
    console.print(table)


def _latest_loss(events: list[dict[str, Any]]) -> float | None:
    for event in events:  # newest first
        data = event.get("data") or {}
        for key in ("train_loss", "loss"):
            if isinstance(data.get(key), int | float):
                return float(data[key])
    return None


def _follow(gateway: Gateway, job_id: str, *, interval: float) -> dict[str, Any]:
    seen: set[str] = set()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("queued", total=None, loss="-")
        while True:
            job = gateway.call("GET", f"/v1/fine_tuning/jobs/{job_id}")
            events = gateway.call(
                "GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}
            )["data"]
            for event in reversed(events):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    if event.get("type") != "metrics":
                        progress.console.print(f"[dim]{event['message']}[/]")
            loss = _latest_loss(events)
            progress.update(
                bar,
                description=job["status"],
                total=job.get("total_steps") or None,
                completed=job.get("step") or 0,
                loss="-" if loss is None else f"{loss:.4f}",
            )
            if job["status"] in TERMINAL:
                return job
            time.sleep(interval)


@jobs_app.command("follow")
def follow(
    job_id: Annotated[str, typer.Argument(help="The job's id (ftjob-…).")],
    api_key: ApiKey,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 2.0,
    url: Url = None,
) -> None:
    """Show a job's progress (step of total, loss) until it succeeds, fails or is cancelled."""
    with Gateway(url, api_key) as gateway:
        _follow_to_end(gateway, job_id, interval=interval)


def _follow_to_end(gateway: Gateway, job_id: str, *, interval: float) -> None:
    """Follow the job; then say how to use its result, or fail with why it ended."""
    job = _follow(gateway, job_id, interval=interval)
    if job["status"] == "succeeded":
        console.print(
            f"[green]succeeded[/]: chat with model [bold]{job['fine_tuned_model']}[/] "
            f"({job.get('trained_tokens') or 0} tokens trained)"
        )
        return
    if job["status"] == "failed":
        error = job.get("error") or {}
        fail(f"job {job_id} failed: {error.get('message', 'no reason given')}")
    fail(f"job {job_id} was cancelled")


@jobs_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id (ftjob-…).")],
    api_key: ApiKey,
    url: Url = None,
) -> None:
    """Cancel a job: a queued one at once, a running one after its current step."""
    with Gateway(url, api_key) as gateway:
        job = gateway.call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
    if job["status"] == "cancelled":
        console.print(f"{job_id} cancelled")
    else:
        console.print(f"{job_id}: cancellation requested; it stops after its current step")
