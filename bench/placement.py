"""Placement benchmark: solve times of the Mélange ILP, and savings against single GPU types.

Writes bench/results/placement.json:

- ``solve_ms``: median time of the integer program (built and solved by HiGHS) for one
  service (6×6 buckets × 7 GPU types × slice factor 8), for one with a spot share (two
  programs: some spot, none), and for 3 such services planned jointly under shared
  availability limits — limits their separate plans fit (the usual case: solved service
  by service, which is exact then) and limits that bind (the services alone, then one
  joint program); ``plan_ms``: the same end to end through `plan_services` (T_g[b] from
  the roofline, the programs, LP bounds, single-type costs).
- ``savings``: for a short-chat and a long-document workload of Llama-2-7B, TPOT SLOs of
  40 and 120 ms and rates 1–64 req/s, the plan's cost and every single type's cost, all
  T_g[b] from the roofline model (no measured profiles), default catalog, on-demand.
- ``savings_paper_types``: the same on the four types of the paper (L4, A10G, A100-80GB,
  H100-80GB), closer to its setting.

Run: ``python bench/placement.py`` (``--quick``: fewer repeats and rates).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from lmaas.placement import (  # noqa: E402
    SLO,
    ServiceSpec,
    Workload,
    default_catalog,
    model_by_name,
    plan_service,
    plan_services,
)
from lmaas.placement.ilp import Offer, solve  # noqa: E402
from lmaas.placement.joint import solve_jointly  # noqa: E402
from lmaas.placement.planner import _problem  # noqa: E402

RATES = (1, 2, 4, 8, 16, 32, 64)
SLOS_MS = (40, 120)
PAPER_TYPES = ("L4", "A10G", "A100-80GB", "H100-80GB")
PAPER_RANGES = {"short-chat": (0.09, 0.77), "long-document": (0.02, 0.33)}


def _services() -> list[ServiceSpec]:
    llama2, llama3 = model_by_name("llama-2-7b"), model_by_name("llama-3-8b")
    return [
        ServiceSpec(
            name="chat-a",
            model=llama2,
            workload=Workload.short_chat(32),
            slo=SLO(target_ms=120),
            slice_factor=8,
        ),
        ServiceSpec(
            name="chat-b",
            model=llama2,
            workload=Workload.short_chat(16),
            slo=SLO(target_ms=40),
            slice_factor=8,
        ),
        ServiceSpec(
            name="chat-c",
            model=llama3,
            workload=Workload.short_chat(24),
            slo=SLO(target_ms=120),
            slice_factor=8,
            max_spot_share=0.3,
        ),
    ]


def _limited_catalog(binding: bool = False):
    """Availability limits that the three services' separate plans fit (or, `binding`, not)."""
    limits = (
        {"H100-80GB": 2, "A100-80GB": 1, "L4": 3}
        if binding
        else {"H100-80GB": 2, "A100-80GB": 3, "L4": 4}
    )
    return [g.model_copy(update={"max_count": limits.get(g.name)}) for g in default_catalog()]


CPU_MS: dict[str, float] = {}


def _median_ms(fn, repeats: int, key: str | None = None) -> float:
    """Median wall time; the median CPU time of this process goes to CPU_MS[key]."""
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    if key is not None:
        CPU_MS[key] = round(statistics.median(cpu), 3)
    return round(statistics.median(times), 3)


def solve_times(repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    services = _services()
    out_solve: dict[str, float] = {}
    out_plan: dict[str, float] = {}
    for binding in (False, True):
        catalog = _limited_catalog(binding)
        offers = [
            Offer(g.name, g.price_per_hour, g.spot_price_per_hour, g.max_count) for g in catalog
        ]
        problems = [_problem(s, catalog) for s in services]
        if len(problems[0].buckets) != 36 or len(offers) != 7:
            raise RuntimeError("the benchmark's problem is not 6×6 buckets × 7 types")
        joint = solve_jointly(problems, offers)
        alone = sum(solve_jointly([p], offers).cost for p in problems)
        if binding != (joint.cost > alone + 1e-9):
            raise RuntimeError(f"the limits should {'' if binding else 'not '}bind")
        if binding:
            key = "three_services_jointly_binding_limits"
        else:
            single = "one_service_6x6_buckets_7_types_s8"
            out_solve[single] = _median_ms(
                lambda problems=problems, offers=offers: solve(problems[:1], offers),
                repeats,
                single,
            )
            out_solve["one_service_with_spot_share"] = _median_ms(
                lambda problems=problems, offers=offers: solve(problems[2:], offers),
                repeats,
                "one_service_with_spot_share",
            )
            out_plan["one_service_6x6_buckets_7_types_s8"] = _median_ms(
                lambda catalog=catalog: plan_services(services[:1], catalog), repeats
            )
            key = "three_services_jointly_6x6_buckets_7_types_s8"
        out_solve[key] = _median_ms(
            lambda problems=problems, offers=offers: solve_jointly(problems, offers), repeats, key
        )
        out_plan[key] = _median_ms(
            lambda catalog=catalog: plan_services(services, catalog), repeats
        )
    return out_solve, out_plan


def savings(rates, type_names=None) -> list[dict]:
    model = model_by_name("llama-2-7b")
    catalog = [g for g in default_catalog() if type_names is None or g.name in type_names]
    rows = []
    for name, make in (
        ("short-chat", Workload.short_chat),
        ("long-document", Workload.long_document),
    ):
        for slo_ms in SLOS_MS:
            for rate in rates:
                plan = plan_service(
                    model=model,
                    workload=make(rate),
                    slo=SLO(metric="tpot", statistic="mean", target_ms=slo_ms),
                    gpu_types=catalog,
                    slice_factor=8,
                )
                feasible = {k: v for k, v in plan.single_type_costs.items() if v is not None}
                best = min(feasible, key=lambda k: feasible[k]) if feasible else None
                rows.append(
                    {
                        "workload": name,
                        "slo_ms": slo_ms,
                        "rate": rate,
                        "plan_cost": plan.cost_per_hour,
                        "single_type_costs": plan.single_type_costs,
                        "best_single_type": best,
                        "savings": plan.savings_vs_best_single,
                        "counts": {k: v for k, v in plan.counts.items() if v},
                        "lp_bound": plan.lp_bound,
                    }
                )
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in PAPER_RANGES:
        values = [r["savings"] for r in rows if r["workload"] == name and r["savings"] is not None]
        by_slo = {
            str(slo): [
                r["savings"]
                for r in rows
                if r["workload"] == name and r["slo_ms"] == slo and r["savings"] is not None
            ]
            for slo in SLOS_MS
        }
        out[name] = {
            "min": round(min(values), 4),
            "max": round(max(values), 4),
            "by_slo_ms": {k: [round(min(v), 4), round(max(v), 4)] for k, v in by_slo.items() if v},
            "paper": list(PAPER_RANGES[name]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and rates")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/placement.json")
    args = parser.parse_args()
    repeats = 3 if args.quick else 15
    rates = (1, 8, 64) if args.quick else RATES
    solve_ms, plan_ms = solve_times(repeats)
    rows = savings(rates)
    paper_rows = savings(rates, PAPER_TYPES)
    result = {
        "solve_ms": solve_ms,
        "solve_cpu_ms": CPU_MS,
        "plan_ms": plan_ms,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "target_ms": 100,
        "savings": rows,
        "summary": summarize(rows),
        "savings_paper_types": paper_rows,
        "summary_paper_types": summarize(paper_rows),
        "settings": {
            "model": "llama-2-7b (roofline, default efficiencies)",
            "slice_factor": 8,
            "slo": "mean TPOT",
            "catalog": [g.model_dump() for g in default_catalog()],
            "quick": args.quick,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"solve_ms": solve_ms, "solve_cpu_ms": CPU_MS, "plan_ms": plan_ms}, indent=2))
    for label, summary in (
        ("default catalog", result["summary"]),
        ("paper types", result["summary_paper_types"]),
    ):
        for name, s in summary.items():
            print(
                f"{label:16s} {name:14s} savings {s['min']:.1%}–{s['max']:.1%} (paper {s['paper'][0]:.0%}–{s['paper'][1]:.0%}) {s['by_slo_ms']}"
            )


if __name__ == "__main__":
    main()
