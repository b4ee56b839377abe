"""The placement commands of `lmaas`: `lmaas plan` and `lmaas profile`.

`register(app)` adds them to the root typer app. Heavy imports (scipy, numpy) happen when a
command runs, so `lmaas --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["plan", "profile", "register"]

SloMetric = Annotated[str, typer.Option("--slo-metric", help="tpot or ttft")]
SloStatistic = Annotated[str, typer.Option("--slo-statistic", help="mean or p99")]


def register(app: typer.Typer) -> None:
    """Add `plan` and `profile` to `app`."""
    app.command("plan")(plan)
    app.command("profile")(profile)


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=1)


def _read_structured(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _workload(spec: str | None, rate: float | None, default: Any = None):
    from lmaas.placement.workload import Workload

    if spec is None and default is not None:
        workload = default
    elif spec in (None, "short-chat"):
        workload = Workload.short_chat(1.0 if rate is None else rate)
    elif spec == "long-document":
        workload = Workload.long_document(1.0 if rate is None else rate)
    else:
        data = _read_structured(Path(spec))
        if isinstance(data, dict) and "grid" in data:
            workload = Workload.from_grid(
                float(data.get("rate", 1.0)),
                data["input_edges"],
                data["output_edges"],
                data["grid"],
            )
        else:
            workload = Workload.model_validate(data)
    return workload if rate is None else workload.scaled(rate)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} must look like NAME=VALUE, got {value!r}")
        out[key] = val
    return out


def plan(
    profile_file: Annotated[
        Path | None,
        typer.Option(
            "--profile", help="throughput profile (T_g per bucket): ours, or a Mélange example.json"
        ),
    ] = None,
    workload: Annotated[
        str | None,
        typer.Option(help="short-chat, long-document, or a workload file (JSON/YAML)"),
    ] = None,
    rate: Annotated[float | None, typer.Option(help="total requests/s (overrides)")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="gateway /metrics URL: plan for the live traffic")
    ] = None,
    window: Annotated[float, typer.Option(help="seconds between the two scrapes")] = 30.0,
    label: Annotated[list[str], typer.Option(help="metric label filter NAME=VALUE (repeat)")] = [],  # noqa: B006 — typer needs a literal default
    model: Annotated[
        str | None, typer.Option(help="llama-2-7b, llama-3-8b, …, or a model file (JSON/YAML)")
    ] = None,
    slo_metric: SloMetric = "tpot",
    slo_statistic: SloStatistic = "mean",
    slo_ms: Annotated[float | None, typer.Option("--slo-ms", help="SLO target (ms)")] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="GPU types file: adds to / overrides the defaults")
    ] = None,
    gpu: Annotated[list[str], typer.Option(help="only these GPU types (repeat)")] = [],  # noqa: B006
    max_count: Annotated[list[str], typer.Option(help="availability limit TYPE=N (repeat)")] = [],  # noqa: B006
    slice_factor: Annotated[int | None, typer.Option(min=1, help="slices per bucket")] = None,
    min_replicas: Annotated[int, typer.Option(min=0)] = 0,
    max_spot_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the plan as one JSON object")
    ] = False,
) -> None:
    """Plan the cheapest GPU mix that serves a workload under an SLO (Mélange)."""
    from lmaas.placement.catalog import default_catalog, load_catalog, merge_catalog
    from lmaas.placement.metrics import fetch_workload
    from lmaas.placement.planner import plan_service
    from lmaas.placement.profiles import MelangeInput, load_profile_file
    from lmaas.placement.specs import SLO, ModelSpec, known_models, model_by_name

    try:
        profiles, default_workload, types, factor = None, None, default_catalog(), 4
        spec = None if model is None else model
        if profile_file is not None:
            loaded = load_profile_file(profile_file)
            if isinstance(loaded, MelangeInput):
                profiles, default_workload = loaded.profiles, loaded.workload
                types, factor = loaded.gpu_types, loaded.slice_factor
            else:
                profiles = loaded
                if spec is None and loaded.model in known_models():
                    spec = loaded.model  # else the profile alone must cover every bucket
        elif spec is None:
            spec = "llama-2-7b"
        if catalog is not None:
            types = merge_catalog(types, load_catalog(catalog))
        if gpu:
            wanted = {g.lower() for g in gpu}
            types = [t for t in types if t.name.lower() in wanted]
            if not types:
                raise ValueError(f"none of the GPU types {gpu} is in the catalog")
        limits = {k: int(v) for k, v in _pairs(max_count, "--max-count").items()}
        unknown = set(limits) - {t.name for t in types}
        if unknown:
            raise ValueError(f"--max-count names unknown GPU types: {', '.join(sorted(unknown))}")
        types = [
            t.model_copy(update={"max_count": limits[t.name]}) if t.name in limits else t
            for t in types
        ]
        if metrics is not None:
            observed = fetch_workload(metrics, window_s=window, labels=_pairs(label, "--label"))
            load = observed if rate is None else observed.scaled(rate)
        else:
            load = _workload(workload, rate, default_workload)
        model_spec = None
        if spec is not None:
            path = Path(spec)
            model_spec = (
                ModelSpec.model_validate(_read_structured(path))
                if path.suffix in {".json", ".yaml", ".yml"}
                else model_by_name(spec)
            )
        slo = None
        if slo_ms is not None:
            slo = SLO(metric=slo_metric, statistic=slo_statistic, target_ms=slo_ms)
        elif profiles is not None and profiles.slo is not None:
            slo = profiles.slo
        elif model_spec is not None:
            slo = SLO(metric=slo_metric, statistic=slo_statistic, target_ms=120.0)
        result = plan_service(
            model=model_spec,
            workload=load,
            slo=slo,
            gpu_types=types,
            profiles=profiles,
            min_replicas=min_replicas,
            max_spot_share=max_spot_share,
            slice_factor=slice_factor or factor,
        )
    except ValueError as exc:  # PlacementInfeasible, MetricsUnavailable, bad files
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(result.model_dump(mode="json")) + "\n")
        return
    _print_plan(result, load, slo)


def _print_plan(result: Any, load: Any, slo: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"{load.rate:g} req/s" + (f", {slo.describe()}" if slo is not None else "")
    table = Table(title=f"GPU plan — {title}")
    for column in ("GPU type", "instances", "spot", "$/h", "buckets served"):
        table.add_column(
            column, justify="left" if column in ("GPU type", "buckets served") else "right"
        )
    for name, count in result.counts.items():
        if count:
            served = result.buckets_by_type.get(name, [])
            table.add_row(
                name,
                str(count),
                str(result.spot_counts.get(name, 0)),
                f"{result.cost_by_type.get(name, 0.0):.4f}",
                ", ".join(served) if len(served) <= 4 else f"{len(served)} buckets",
            )
    table.add_row("total", str(sum(result.counts.values())), "", f"{result.cost_per_hour:.4f}", "")
    console.print(table)
    singles = {k: v for k, v in result.single_type_costs.items() if v is not None}
    if singles:
        best = min(singles, key=lambda k: singles[k])
        console.print(f"best single type: {best} at ${singles[best]:.4f}/h", highlight=False)
    if result.savings_vs_best_single is not None:
        console.print(f"savings vs best single type: {result.savings_vs_best_single:.1%}")
    if result.lp_bound is not None:
        console.print(f"LP lower bound: ${result.lp_bound:.4f}/h", highlight=False)


def profile(
    runtime_url: Annotated[
        str | None, typer.Option(help="runtime base URL (default: LMAAS_RUNTIME_HOST/PORT)")
    ] = None,
    gpu_type: Annotated[
        str | None, typer.Option(help="name to file the figures under (default: the device)")
    ] = None,
    workload: Annotated[
        str, typer.Option(help="buckets: short-chat, long-document, or a workload file")
    ] = "short-chat",
    bucket: Annotated[list[str], typer.Option(help="only these bucket names (repeat)")] = [],  # noqa: B006
    slo_metric: SloMetric = "tpot",
    slo_statistic: SloStatistic = "mean",
    slo_ms: Annotated[float, typer.Option("--slo-ms", help="SLO target (ms)")] = 120.0,
    rates: Annotated[str, typer.Option(help="rising request rates, comma-separated")] = (
        "0.5,1,2,4,8,16,32,64"
    ),
    requests: Annotated[int, typer.Option(min=2, help="requests per rate")] = 30,
    refine: Annotated[int, typer.Option(min=0, help="bisection steps after the search")] = 2,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="profile file to write (merged if it exists)")] = Path(
        "profile.json"
    ),
) -> None:
    """Measure throughput profiles (T_g per bucket) on the local device against a runtime."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from lmaas.config import get_settings
    from lmaas.placement.profiler import Measurement, Profiler
    from lmaas.placement.profiles import ProfileSet
    from lmaas.placement.specs import SLO
    from lmaas.placement.workload import Bucket

    console = Console()
    try:
        slo = SLO(metric=slo_metric, statistic=slo_statistic, target_ms=slo_ms)
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
        buckets = _workload(workload, None).buckets
        if bucket:
            buckets = [b for b in buckets if b.name in set(bucket)]
            if not buckets:
                raise ValueError(f"no bucket is named {', '.join(bucket)}")
        settings = get_settings()
        url = runtime_url or f"http://{settings.runtime_host}:{settings.runtime_port}"
        existing = ProfileSet.model_validate_json(out.read_text()) if out.exists() else None
        profiler = Profiler(
            url,
            gpu=gpu_type or "local",
            slo=slo,
            buckets=buckets,
            rates=rate_list,
            num_requests=requests,
            refine_steps=refine,
            seed=seed,
        )
        info = profiler.info()
        profiler.gpu = gpu_type or info.device
        steps = len(rate_list) + refine
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            tasks = {b.name: progress.add_task(b.name, total=steps, last="") for b in buckets}

            def on_step(b: Bucket, m: Measurement) -> None:
                progress.update(
                    tasks[b.name],
                    advance=1,
                    last=f"{m.rate:g} req/s: {slo.metric} {slo.statistic} "
                    f"{m.statistic(slo):.1f} ms, keep-up {m.keep_up:.2f}",
                )

            result = profiler.run(existing, on_step=on_step)
            for task in tasks.values():
                progress.update(task, completed=steps)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    result.save(out)
    table = Table(title=f"T[{profiler.gpu}] under {slo.describe()} — {info.model}")
    table.add_column("bucket")
    table.add_column("req/s", justify="right")
    for b in buckets:
        table.add_row(b.name, f"{result.get(profiler.gpu, b.name) or 0:.3g}")
    console.print(table)
    console.print(f"written to {out}")
