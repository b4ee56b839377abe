"""Speculative decoding end to end on the default model: latency per policy under Poisson load,
and one online-distillation (OSD) round on a shifted workload.

    python bench/speculation.py [--quick] [--only grounded,chat] [--skip-osd] [--reps N]

Everything runs for real on this machine (CPU): SmolLM2-135M-Instruct in `lmaas.engine`
(`AsyncEngine`: continuous batching, paged KV cache, the speculator of the step loop), no
HTTP. Results go to bench/results/speculation.json, rewritten after every run, so that a
cut-short bench still leaves its figures.

- Workloads: `grounded` — summarise / repeat / rewrite / shorten a paragraph of this
  repository's own documentation (README.md, bench/README.md, shared docs: a fixed local
  corpus); `chat` — open questions from `finetune.draft_corpus` (held-out topics).
- Proposers: `draft` — the default model's draft, built by `build_default_draft` with
  capped sizes (`DRAFT_SIZES`, a few minutes) and cached in bench/.cache/speculation;
  `prompt_lookup` — n-gram matches in the prompt and output so far.
- Policies per request: `off`, `fixed:1`, `fixed:3`, `fixed:5`, `smartspec` (max k 5).
  `off` runs on each proposer's engine (an engine holding a draft model is not the same
  process state as one without), so each proposer's SmartSpec is compared with `off` on
  its own engine.
- Load: Poisson arrivals at each rate (the same seeded arrival times and prompts for
  every policy and repetition); latency = arrival to last token, greedy, fixed output
  length. The runs of a rate are interleaved: `--reps` repetitions, each running every
  (proposer, policy) once, odd ones in the reverse order (`grid_order`), so that the
  load swings of this shared machine hit all policies of a rate alike; the report gives
  each cell's spread over repetitions and the ratios per repetition. Every run records
  the load average.
- OSD: the engine serves Python-code prompts (a workload the draft was not built on)
  with draft v1 (k = 1, so accepted / proposed is the per-token acceptance), recording
  what the draft got wrong; one `lmaas.speculation.osd_round` (the worker task, called
  with its worker context) distils v2; v2 is hot-swapped into the same engine and the
  held-out code prompts are served again. `acceptance_before` / `acceptance_after` are
  the engine's measured acceptance on those held-out prompts.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent / ".cache" / "speculation"

# The capped draft recipe: a few minutes on 2 shared cores instead of ~10 (bench/spec_draft.py).
DRAFT_SIZES = {
    "num_train": 48,
    "num_heldout": 8,
    "max_new_tokens": 64,
    "steps": 120,
    "depth": 4,  # the plan bench/spec_draft.py selected on this model ([0, 1, 2, 29])
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_target() -> tuple[Path, torch.nn.Module, torch.nn.Module, object]:
    """The default model's folder, its fp32 and bf16 copies, its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmaas.config import get_settings
    from lmaas.engine.model_files import materialize_model

    settings = get_settings()
    folder = materialize_model(settings.resolved_base_model, settings.model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    target = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fast = copy.deepcopy(target).to(torch.bfloat16).eval()
    return folder, target, fast, tokenizer


def ensure_draft(cache: Path = CACHE) -> dict:
    """The bench's draft (v1 under `cache/drafts`), built with the capped recipe if missing."""
    from lmaas.finetune.distill import DistillConfig
    from lmaas.finetune.draft_builder import latest_draft_version
    from lmaas.finetune.draft_jobs import build_default_draft, default_draft_samples

    report_path = cache / "draft-report.json"
    drafts = cache / "drafts"
    if report_path.is_file() and latest_draft_version(str(drafts)) is not None:
        return json.loads(report_path.read_text())
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folder, target, fast, tokenizer = load_target()
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int, what: str) -> None:
        if time.monotonic() - last[0] > 15 or done == total:
            last[0] = time.monotonic()
            log(f"draft: {what} {done}/{total}")

    s = DRAFT_SIZES
    samples = default_draft_samples(
        fast,
        tokenizer,
        num_train=s["num_train"],
        num_heldout=s["num_heldout"],
        max_new_tokens=s["max_new_tokens"],
        batch_size=16,
        progress=progress,
    )
    generated = time.monotonic() - started
    report = build_default_draft(
        target,
        tokenizer,
        str(drafts),
        samples=samples,
        inference_model=fast,
        candidates=((s["depth"], "first_last"),),
        config=DistillConfig(steps=s["steps"]),
        base_model=folder.name,
        progress=progress,
    )
    report["sizes"] = s
    report["seconds"] = {"generate": generated, "total": time.monotonic() - started}
    cache.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, default=str))
    return report


# Prompts ------------------------------------------------------------------------------------

_GROUNDED = [
    "Summarize the following text in two sentences.\n\n{text}",
    "Repeat the following text exactly, fixing any typos.\n\n{text}",
    "Rewrite the following text in simpler words.\n\n{text}",
    "Shorten the following text, keeping its main points.\n\n{text}",
]
_CORPUS_FILES = ["README.md", "bench/README.md", "platform/lmaas/engine/speculation/__init__.py"]


def corpus_paragraphs(root: Path, *, min_words: int = 50, max_words: int = 110) -> list[str]:
    """Prose paragraphs of this repository's docs: the grounded workload's texts."""
    out: list[str] = []
    for name in _CORPUS_FILES:
        path = root / name
        if not path.is_file():
            continue
        for block in path.read_text().split("\n\n"):
            lines = [ln.strip() for ln in block.splitlines()]
            if not lines or any(ln.startswith(("|", "```", "#", "<!--")) for ln in lines):
                continue
            text = " ".join(ln.lstrip("-* ") for ln in lines)
            words = text.split()
            if min_words <= len(words):
                out.append(" ".join(words[:max_words]))
    return out


def workload_prompts(workload: str, n: int, seed: int = 0) -> list[str]:
    import random

    from lmaas.finetune.draft_corpus import make_prompts

    rng = random.Random(f"{workload}-{seed}")
    if workload == "chat":
        return make_prompts("chat", n, split="heldout", seed=seed)
    if workload == "code":
        return make_prompts("code", n, split="heldout", seed=seed)
    if workload == "code-train":
        return make_prompts("code", n, split="train", seed=seed)
    paragraphs = corpus_paragraphs(Path(__file__).resolve().parents[1])
    rng.shuffle(paragraphs)
    return [
        _GROUNDED[i % len(_GROUNDED)].format(text=paragraphs[i % len(paragraphs)]) for i in range(n)
    ]


# The engine ---------------------------------------------------------------------------------


def make_engine(
    folder: Path,
    proposer: str,
    draft_url: str | None,
    threads: int,
    max_k: int,
    dtype: torch.dtype | None = None,
):
    from lmaas.engine.async_engine import AsyncEngine
    from lmaas.engine.engine_config import EngineConfig, resolve_dtype

    cpu = torch.device("cpu")
    config = EngineConfig(
        model_path=folder,
        model_name="smollm2",
        device=cpu,
        dtype=dtype or resolve_dtype("auto", cpu),
        kv_cache_bytes=384 << 20,
        max_num_seqs=32,
        max_batched_tokens=512,
        lora_slots=0,
        threads=threads,
        speculation="smartspec",
        speculation_max_k=max_k,
        speculation_proposer=proposer,
        draft_url=draft_url,
    )
    return AsyncEngine(config)


def request(rid: str, text: str, policy: str, max_tokens: int, tenant: str = "bench"):
    from lmaas.protocol import GenerateRequest, SamplingParams

    return GenerateRequest(
        request_id=rid,
        tenant_id=tenant,
        messages=[{"role": "user", "content": text}],
        sampling=SamplingParams(
            max_tokens=max_tokens, temperature=0, ignore_eos=True, speculation=policy
        ),
    )


async def _one(engine, req, arrival: float, t0: float) -> tuple[float, list[int]]:
    import asyncio

    await asyncio.sleep(max(0.0, t0 + arrival - time.perf_counter()))
    start = t0 + arrival
    tokens: list[int] = []
    async for event in engine.generate(req):
        tokens += event.token_ids
    return time.perf_counter() - start, tokens


async def run_load(
    engine, prompts: list[str], arrivals: list[float], policy: str, max_tokens: int, tag: str
) -> dict:
    """Serve `prompts` arriving at `arrivals` (seconds) under `policy`; latency figures."""
    import asyncio

    spec = engine.speculator
    before = spec.stats.snapshot() if spec is not None else None
    _TRACE["run"] = f"{tag}|{policy}"
    t0 = time.perf_counter() + 0.05
    cpu0 = time.process_time()
    results = await asyncio.gather(
        *(
            _one(engine, request(f"{tag}-{i}", p, policy, max_tokens), a, t0)
            for i, (p, a) in enumerate(zip(prompts, arrivals, strict=True))
        )
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    lat = sorted(r[0] for r in results)
    out = {
        "mean_s": sum(lat) / len(lat),
        "p99_s": percentile(lat, 0.99),
        "wall_s": wall,
        "cpu_s": cpu,  # the bench process's CPU seconds (engine included): its work
        "latencies": [round(x, 4) for x in lat],
        "tokens": [r[1] for r in results],
    }
    if spec is not None and before is not None:
        after = spec.stats.snapshot()
        proposed = after["proposed_tokens"] - before["proposed_tokens"]
        accepted = after["accepted_tokens"] - before["accepted_tokens"]
        out["proposed"], out["accepted"] = proposed, accepted
        out["acceptance"] = accepted / proposed if proposed else None
        steps = after["steps"] - before["steps"]
        out["mean_k"] = (
            sum(int(k) * n for k, n in after["chosen_k"].items())
            - sum(int(k) * n for k, n in before["chosen_k"].items())
        ) / max(1, sum(after["chosen_k"].values()) - sum(before["chosen_k"].values()))
        out["spec_steps"] = steps
    return out


_TRACE: dict = {"run": "", "file": None}


def trace_steps(engines: dict, path: Path) -> None:
    """Append every step of `engines` to `path` (JSON lines): the run, what the SmartSpec
    models predicted (step seconds, tokens) and what was measured (`Speculator.on_step`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _TRACE["file"] = path.open("a")

    def recorder(name: str):
        def record(step: dict) -> None:
            out.write(json.dumps({"engine": name, "run": _TRACE["run"], **step}) + "\n")

        return record

    for name, engine in engines.items():
        engine.speculator.on_step = recorder(name)


def summarise_trace(path: Path) -> str:
    """Per engine and policy: steps, mean k, measured / predicted step seconds (median and
    mean), emitted / predicted tokens — how well the controller's models fit."""
    import statistics

    groups: dict[tuple[str, str], list[dict]] = {}
    for line in path.read_text().splitlines():
        step = json.loads(line)
        policy = step["run"].rsplit("|", 1)[-1]
        if step["run"].startswith("w-") or not step["ks"]:
            continue  # warm-up, or no decoding request
        groups.setdefault((step["engine"], policy), []).append(step)
    rows = [
        "| engine | policy | steps | mean k | time measured / predicted, median | mean "
        "| tokens emitted / predicted |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (engine, policy), steps in sorted(groups.items()):
        ratios = [s["measured_s"] / s["predicted_s"] for s in steps if s["predicted_s"] > 0]
        ks = [k for s in steps for k in s["ks"]]
        emitted = sum(s["emitted_tokens"] for s in steps)
        predicted = sum(s["predicted_tokens"] for s in steps)
        rows.append(
            f"| {engine} | {policy} | {len(steps)} | {sum(ks) / max(1, len(ks)):.2f} | "
            f"{statistics.median(ratios):.2f} | "
            f"{sum(s['measured_s'] for s in steps) / sum(s['predicted_s'] for s in steps):.2f} | "
            f"{emitted / max(predicted, 1e-9):.2f} |"
        )
    return "\n".join(rows)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    import random

    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


# Results ------------------------------------------------------------------------------------

POLICIES = ["off", "fixed:1", "fixed:3", "fixed:5", "smartspec"]
PROPOSERS = ["prompt_lookup", "draft"]


class Results:
    """The JSON file, rewritten after every run (a cut-short bench keeps what it measured)."""

    def __init__(self, path: Path, meta: dict | None) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.is_file() else {}
        if meta is not None or "setup" not in self.data:
            self.data["setup"] = meta or {}
        self.data.setdefault("details", {})

    def reset(self, workload: str) -> None:
        """Forget `workload`'s latency figures (a new grid is not pooled with an old one);
        the OSD and exactness figures stay."""
        self.data.pop(workload, None)
        details = self.data["details"]
        for key in [k for k in details if k.startswith(f"{workload}/")]:
            del details[key]
        self.save()

    def put(self, workload: str, proposer: str, rates: list[float], policy: str, i: int, r: dict):
        """Record one run; a later pass at the same cell is pooled with the earlier ones."""
        block = self.data.setdefault(workload, {}).setdefault(proposer, {"rates": rates})
        block["rates"] = rates
        fig = block.setdefault(
            policy, {"mean_s": [None] * len(rates), "p99_s": [None] * len(rates)}
        )
        cell = self.data["details"].setdefault(f"{workload}/{proposer}/{policy}", {})
        old = cell.get(str(rates[i]))
        passes = [] if old is None else old.get("passes", [old])
        passes.append({k: v for k, v in r.items() if k != "tokens"})
        cell[str(rates[i])] = {"passes": passes}
        mean = sum(p["mean_s"] for p in passes) / len(passes)
        if all("latencies" in p for p in passes):
            p99 = percentile(sorted(x for p in passes for x in p["latencies"]), 0.99)
        else:  # an early pass kept no latencies: the larger of the passes' p99
            p99 = max(p["p99_s"] for p in passes)
        fig["mean_s"][i], fig["p99_s"][i] = round(mean, 4), round(p99, 4)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


# The latency grid ---------------------------------------------------------------------------


async def warm_up(engine, max_tokens: int) -> None:
    """Kernels, caches and the SmartSpec step-time model see every policy once."""
    prompts = workload_prompts("grounded", 4) + workload_prompts("chat", 4)
    for policy in POLICIES:
        await run_load(engine, prompts, [0.0] * len(prompts), policy, max_tokens, f"w-{policy}")


def grid_order(rep: int) -> list[tuple[str, str]]:
    """The (proposer, policy) runs of one repetition at one rate, interleaved: `off` once
    on each proposer's engine, then every speculating policy on each proposer's engine. Odd repetitions run the reverse order, so that a drift of the
    machine's load over a repetition hits the first and the last policies alike."""
    runs = [(proposer, "off") for proposer in PROPOSERS]
    runs += [(proposer, policy) for proposer in PROPOSERS for policy in POLICIES[1:]]
    return runs if rep % 2 == 0 else runs[::-1]


async def latency_grid(args, engines: dict, results: Results) -> None:
    """Every (workload, rate, proposer, policy), `args.reps` repetitions per rate.

    The runs of one rate are interleaved (`grid_order`): each repetition runs every policy
    once before the next repetition starts, so that the machine's load swings — other jobs
    on these cores — fall on all policies of a rate alike instead of on whichever ran
    during a busy minute. Every run of a rate serves the same prompts at the same arrival
    times, so the spread of a cell's repetitions is the machine's noise alone. A cell pools
    its repetitions (mean of the means, p99 over all requests) and keeps each one
    (`details`), from which the report gives the spread and the repetition-paired
    ratios."""
    rates = args.rates
    for workload in args.workloads:
        if not args.first_rep:
            results.reset(workload)
        for i, rate in enumerate(rates):
            prompts = workload_prompts(workload, args.requests)
            arrivals = poisson_arrivals(rate, args.requests, seed=1000 + i)
            for rep in range(args.first_rep, args.first_rep + args.reps):
                off_tokens = None
                for position, (proposer, policy) in enumerate(grid_order(rep)):
                    tag = f"{workload}-{proposer}-{policy}-{rate}-{rep}"
                    r = await run_load(
                        engines[proposer],
                        prompts,
                        arrivals,
                        policy,
                        args.max_tokens,
                        tag.replace(":", ""),
                    )
                    if policy == "off":
                        off_tokens = r["tokens"]
                    r["outputs_match_off"] = (
                        None
                        if off_tokens is None
                        else sum(a == b for a, b in zip(r["tokens"], off_tokens, strict=False))
                        / len(prompts)
                    )
                    r["rep"], r["position"] = rep, position
                    r["uptime"] = load_average()
                    results.put(workload, proposer, rates, policy, i, r)
                    log(
                        f"{workload:8s} {proposer:13s} rate {rate:5.2f}/s rep {rep} "
                        f"{policy:9s} mean {r['mean_s']:.3f}s p99 {r['p99_s']:.3f}s "
                        f"acc {r.get('acceptance') or 0:.2f} k {r.get('mean_k', 0):.2f} "
                        f"load {r['uptime'][0]:.2f}"
                    )


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (what `uptime` prints)."""
    import os

    return [round(x, 2) for x in os.getloadavg()]


async def exactness(args, folder: Path, results: Results) -> None:
    """Greedy outputs of `off` vs `fixed:3` (prompt lookup), the same 10 grounded requests
    at once, in float32 and in bfloat16: which precision keeps them identical."""
    out = {}
    prompts = workload_prompts("grounded", 10, seed=7)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        engine = make_engine(folder, "prompt_lookup", None, args.threads, 5, dtype)
        await engine.start()
        runs = {}
        for policy in ("off", "fixed:3", "off"):
            r = await run_load(engine, prompts, [0.0] * 10, policy, args.max_tokens, f"x{name}")
            runs.setdefault(policy, []).append(r["tokens"])
        await engine.shutdown()
        off1, off2 = runs["off"]
        spec = runs["fixed:3"][0]
        out[name] = {
            "off_vs_off": sum(a == b for a, b in zip(off1, off2, strict=True)) / 10,
            "fixed3_vs_off": sum(a == b for a, b in zip(spec, off1, strict=True)) / 10,
        }
        log(f"exactness {name}: {out[name]}")
    results.data["exactness"] = out
    results.save()


# OSD on a shifted workload ------------------------------------------------------------------


async def osd_round_bench(args, folder: Path, results: Results) -> None:
    import shutil

    from lmaas.config import Settings
    from lmaas.finetune.draft_builder import latest_draft_version, load_draft, save_draft_version
    from lmaas.finetune.draft_locations import DraftLocations
    from lmaas.runtime.draft_supervisor import DraftSupervisor
    from lmaas.tasks import OSD_ROUND
    from lmaas.worker import create_worker_app

    work = CACHE / "osd-work"
    shutil.rmtree(work, ignore_errors=True)
    settings = Settings(
        home=work / "home",
        artifact_url=str(work / "artifacts"),
        model_name="smollm2",
        draft_tenant="bench",
        draft_poll_s=0,
        osd_flush_s=3600,  # the bench flushes itself
        osd_round_records=0,
        osd_round_period_s=0,
        osd_steps=args.osd_steps,
    )
    where = DraftLocations.from_settings(settings)
    v1 = latest_draft_version(str(CACHE / "drafts"))
    assert v1 is not None
    save_draft_version(load_draft(v1[1]), where.shared_drafts("smollm2"))
    engine = make_engine(folder, "draft", where.shared_drafts("smollm2"), args.threads, 5)
    await engine.start()
    supervisor = DraftSupervisor(settings, engine)
    await supervisor.start()
    train = workload_prompts("code-train", args.osd_traffic)
    held = workload_prompts("code", args.osd_heldout)
    t0 = time.monotonic()
    served = await run_load(
        engine, train, [0.0] * len(train), "fixed:1", args.osd_max_tokens, "osd-train"
    )
    files = await supervisor.flush(queue_rounds=False)
    engine.speculator.osd = None  # held-out traffic is measured, not trained on
    before = await run_load(
        engine, held, [0.0] * len(held), "fixed:1", args.osd_max_tokens, "osd-before"
    )
    log(f"osd: {len(files)} record files; held-out acceptance with v1 {before['acceptance']:.3f}")
    worker = create_worker_app(settings)
    report = worker.tasks[OSD_ROUND].apply(args=["bench", "smollm2"]).get()
    swapped = await supervisor.poll()
    after = await run_load(
        engine, held, [0.0] * len(held), "fixed:1", args.osd_max_tokens, "osd-after"
    )
    same = sum(a == b for a, b in zip(before["tokens"], after["tokens"], strict=True))
    await engine.shutdown()
    results.data["osd"] = {
        "acceptance_before": before["acceptance"],
        "acceptance_after": after["acceptance"],
        "workload": "code (Python functions; the draft was built on chat + grounded)",
        "how": "engine-measured accepted/proposed at k = 1 on held-out prompts, draft v1 "
        "then the OSD version hot-swapped into the same engine",
        "swapped": swapped,
        "serving": list(supervisor.serving or ()),
        "traffic_requests": len(train),
        "traffic_acceptance": served["acceptance"],
        "heldout_requests": len(held),
        "heldout_outputs_unchanged": same / len(held),
        "round": {k: v for k, v in report.items() if k != "url"},
        "seconds": time.monotonic() - t0,
    }
    results.save()
    log(
        f"osd: acceptance {before['acceptance']:.3f} -> {after['acceptance']:.3f} "
        f"(round on held-out records: {report.get('before', {}).get('greedy')} -> "
        f"{report.get('after', {}).get('greedy')}), swapped={swapped}"
    )


# Main ---------------------------------------------------------------------------------------


def main() -> None:
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rates, 6 requests: a smoke run")
    parser.add_argument("--out", default="bench/results/speculation.json")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)"
    )
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--only", default="grounded,chat", help="workloads of the latency grid")
    parser.add_argument("--skip-osd", action="store_true")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument(
        "--exactness", action="store_true", help="only the float32 / bfloat16 exactness check"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=2,
        help="interleaved repetitions per rate (odd ones in the reverse order), pooled",
    )
    parser.add_argument(
        "--first-rep",
        type=int,
        default=0,
        help="number the repetitions from this one and pool them with the JSON's (more "
        "repetitions of an earlier grid); 0 = a new grid",
    )
    parser.add_argument("--report", action="store_true", help="only rewrite the .md from the JSON")
    parser.add_argument(
        "--trace", help="append every step (predicted vs measured time and tokens) to this file"
    )
    parser.add_argument("--trace-summary", help="print the table of a --trace file and exit")
    parser.add_argument("--osd-traffic", type=int, default=32)
    parser.add_argument("--osd-heldout", type=int, default=12)
    parser.add_argument("--osd-max-tokens", type=int, default=64)
    parser.add_argument("--osd-steps", type=int, default=60)
    args = parser.parse_args()
    md = Path(args.out).with_suffix(".md")
    if args.trace_summary:
        print(summarise_trace(Path(args.trace_summary)))
        return
    if args.report:
        md.write_text(report(json.loads(Path(args.out).read_text())))
        return
    args.workloads = [w for w in args.only.split(",") if w]
    if args.rates is None:
        args.rates = [0.5, 4.0] if args.quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    if args.quick:
        args.requests, args.osd_traffic, args.osd_heldout, args.osd_steps = 6, 8, 4, 10
        args.reps = 1
    torch.set_num_threads(args.threads)
    draft = ensure_draft()
    folder = load_target_folder()
    meta = {
        "model": folder.name,
        "device": "cpu",
        "threads": args.threads,
        "requests_per_run": args.requests,
        "reps": args.reps,
        "rates": args.rates,
        "workloads": args.workloads,
        "uptime_at_start": load_average(),
        "max_tokens": args.max_tokens,
        "max_k": 5,
        "draft": {
            "layers": draft["layers"],
            "relative_cost": draft["relative_cost"],
            "heldout_acceptance": {w: a["greedy"] for w, a in draft["after"].items()},
            "sizes": draft.get("sizes"),
            "build_seconds": draft.get("seconds"),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results = Results(Path(args.out), None if args.exactness or args.first_rep else meta)
    if args.first_rep and not args.exactness:
        setup = results.data["setup"]
        setup["reps"] = args.first_rep + args.reps
        setup.setdefault("more_reps", []).append(
            {"first_rep": args.first_rep, "reps": args.reps, "started": meta["started"]}
        )

    async def run_all() -> None:
        if args.exactness:
            await exactness(args, folder, results)
            return
        if not args.skip_osd:
            await osd_round_bench(args, folder, results)
        if args.skip_grid:
            return
        engines = {
            "prompt_lookup": make_engine(folder, "prompt_lookup", None, args.threads, 5),
            "draft": make_engine(folder, "draft", str(CACHE / "drafts"), args.threads, 5),
        }
        for engine in engines.values():
            await engine.start()
        if args.trace:
            trace_steps(engines, Path(args.trace))
        for name, engine in engines.items():
            t = time.monotonic()
            await warm_up(engine, 16)
            log(f"{name}: warmed up in {time.monotonic() - t:.1f}s")
        try:
            await latency_grid(args, engines, results)
        finally:
            for engine in engines.values():
                await engine.shutdown()

    asyncio.run(run_all())
    if not args.exactness:
        results.data["setup"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results.data["setup"]["uptime_at_end"] = load_average()
    results.save()
    md.write_text(report(results.data))
    log(f"wrote {args.out} and {md}")


def _pooled(cell: dict | None, key: str) -> float | None:
    """The mean of `key` over a detail cell's passes."""
    if not cell:
        return None
    values = [p.get(key) for p in cell.get("passes", [cell])]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _rep_means(data: dict, workload: str, proposer: str, policy: str, rate: float) -> dict:
    """{repetition: mean latency} of one cell (passes without a `rep` count in order)."""
    cell = data.get("details", {}).get(f"{workload}/{proposer}/{policy}", {}).get(str(rate))
    if not cell:
        return {}
    passes = cell.get("passes", [cell])
    return {p.get("rep", n): p["mean_s"] for n, p in enumerate(passes)}


def _paired(data: dict, workload: str, proposer: str, rate: float) -> tuple[str, str]:
    """SmartSpec's mean over the best other policy's, and over `off`'s, per repetition."""
    means = {p: _rep_means(data, workload, proposer, p, rate) for p in POLICIES}
    best, off = [], []
    for rep, m in sorted(means["smartspec"].items()):
        others = [means[p][rep] for p in POLICIES[:-1] if rep in means[p]]
        if others:
            best.append(f"{m / min(others):.2f}")
        if rep in means["off"]:
            off.append(f"{m / means['off'][rep]:.2f}")
    return ", ".join(best) or "—", ", ".join(off) or "—"


def _cpu_ratio(data: dict, workload: str, proposer: str, rate: float) -> str:
    """SmartSpec's pooled CPU seconds per run over the least other policy's, and over off's."""
    details = data.get("details", {})
    cpu = {
        p: _pooled(details.get(f"{workload}/{proposer}/{p}", {}).get(str(rate)), "cpu_s")
        for p in POLICIES
    }
    smart = cpu.pop("smartspec")
    others = [v for v in cpu.values() if v]
    if not smart or not others or not cpu.get("off"):
        return "—"
    return f"{smart / min(others):.2f}, {smart / cpu['off']:.2f}"


def _load(data: dict, workload: str, proposer: str, rate: float) -> str:
    """The mean 1-minute load average over a rate's runs, if recorded."""
    values = []
    for policy in POLICIES:
        cell = data.get("details", {}).get(f"{workload}/{proposer}/{policy}", {}).get(str(rate))
        for p in (cell or {}).get("passes", []):
            if p.get("uptime"):
                values.append(p["uptime"][0])
    return f"{sum(values) / len(values):.1f}" if values else "—"


def report(data: dict) -> str:
    """bench/results/speculation.md: the tables and the targets, from the JSON."""
    setup = data.get("setup", {})
    passes = max(
        (
            len(cell.get("passes", [cell]))
            for cells in data.get("details", {}).values()
            for cell in cells.values()
        ),
        default=0,
    )
    lines = [
        "# Speculative decoding on SmolLM2-135M-Instruct (CPU) — generated by "
        "`python bench/speculation.py --report`",
        "",
        f"Setup: {setup.get('requests_per_run')} requests per run, "
        f"{setup.get('max_tokens')} new tokens each (greedy), Poisson arrivals, "
        f"{setup.get('threads')} torch thread, max k {setup.get('max_k')}; draft layers "
        f"{setup.get('draft', {}).get('layers')}, relative cost "
        f"{setup.get('draft', {}).get('relative_cost', 0):.3f}, offline held-out acceptance "
        f"{ {w: round(a, 3) for w, a in setup.get('draft', {}).get('heldout_acceptance', {}).items()} }. "
        f"Started {setup.get('started')}, finished {setup.get('finished', '— (cut short)')}.",
        "",
        f"Mean (min–max of the repetitions' means) / p99 request latency in seconds (arrival "
        f"to last token), {passes} interleaved repetition(s) pooled per cell: at each rate "
        "every policy runs once before the next repetition (in the reverse order), all on "
        "the same prompts and arrival times, so that load swings of this shared machine "
        "fall on all policies of a rate alike and a cell's spread is the machine's noise "
        "alone. `off` runs on each proposer's engine. "
        f"Load average (1 min) at the start {setup.get('uptime_at_start')}, at the end "
        f"{setup.get('uptime_at_end')}.",
        "",
    ]
    if setup.get("note"):
        lines += [setup["note"], ""]
    checks: list[str] = []
    for workload in ("grounded", "chat"):
        for proposer in PROPOSERS:
            block = data.get(workload, {}).get(proposer)
            if not block:
                lines += [f"## {workload} / {proposer}: not measured", ""]
                continue
            rates = block["rates"]
            lines += [f"## {workload} / {proposer}", ""]
            lines.append("| policy | " + " | ".join(f"{r:g} req/s" for r in rates) + " |")
            lines.append("| --- |" + " ---: |" * len(rates))
            for policy in POLICIES:
                fig = block.get(policy)
                if fig is None:
                    continue
                cells = []
                for r, m, p in zip(rates, fig["mean_s"], fig["p99_s"], strict=True):
                    reps = _rep_means(data, workload, proposer, policy, r)
                    spread = (
                        f" ({min(reps.values()):.2f}–{max(reps.values()):.2f})"
                        if len(reps) > 1
                        else ""
                    )
                    cells.append("—" if m is None else f"{m:.2f}{spread} / {p:.2f}")
                lines.append(f"| {policy} | " + " | ".join(cells) + " |")
            details = data.get("details", {})
            acc = []
            for policy in POLICIES[1:]:
                d = details.get(f"{workload}/{proposer}/{policy}", {})
                vals = [_pooled(d.get(str(r)), "acceptance") for r in rates]
                ks = [_pooled(d.get(str(r)), "mean_k") for r in rates]
                acc.append(
                    f"{policy}: acceptance "
                    + ", ".join("—" if v is None else f"{v:.2f}" for v in vals)
                    + "; mean k "
                    + ", ".join("—" if v is None else f"{v:.1f}" for v in ks)
                )
            cpu = []
            for policy in POLICIES:
                d = details.get(f"{workload}/{proposer}/{policy}", {})
                vals = [_pooled(d.get(str(r)), "cpu_s") for r in rates]
                if any(v is not None for v in vals):
                    cpu.append(
                        f"{policy} " + ", ".join("—" if v is None else f"{v:.1f}" for v in vals)
                    )
            if cpu:
                acc.append(
                    "CPU seconds per run (the work done, less load-sensitive): " + "; ".join(cpu)
                )
            lines += ["", *[f"- {a}" for a in acc], ""]
            smart, off = block.get("smartspec"), block.get("off")
            if smart and off:
                for i, rate in enumerate(rates):
                    m = smart["mean_s"][i]
                    others = [
                        block[p]["mean_s"][i]
                        for p in POLICIES[:-1]
                        if p in block and block[p]["mean_s"][i] is not None
                    ]
                    if m is None or not others or off["mean_s"][i] is None:
                        continue
                    best = min(others)
                    vs_off = m / off["mean_s"][i]
                    paired_best, paired_off = _paired(data, workload, proposer, rate)
                    cpu_ratio = _cpu_ratio(data, workload, proposer, rate)
                    load = _load(data, workload, proposer, rate)
                    checks.append(
                        f"| {workload} | {proposer} | {rate:g} | {load} | {m / best:.2f} "
                        f"{'✅' if m <= 1.05 * best else '❌'} | {paired_best} | {vs_off:.2f} "
                        f"{'✅' if vs_off <= 1.05 else '❌'} | {paired_off} | "
                        f"{1 / vs_off:.2f}× | {cpu_ratio} |"
                    )
    same = []  # cells where smartspec proposed nothing: the same computation as `off`
    for workload in ("grounded", "chat"):
        for proposer in PROPOSERS:
            block = data.get(workload, {}).get(proposer, {})
            cells = data.get("details", {}).get(f"{workload}/{proposer}/smartspec", {})
            for i, rate in enumerate(block.get("rates", [])):
                k = _pooled(cells.get(str(rate)), "mean_k")
                m, o = block.get("smartspec", {}), block.get("off", {})
                if k == 0 and m.get("mean_s", [None] * 5)[i] and o.get("mean_s", [None] * 5)[i]:
                    same.append(m["mean_s"][i] / o["mean_s"][i])
    if same:
        geo = 1.0
        for r in same:
            geo *= r ** (1 / len(same))
        lines += [
            "## Noise floor",
            "",
            f"In {len(same)} cells SmartSpec proposed nothing at all (k = 0 every step: "
            "exactly the computation of `off`, on the draft engine). There its mean latency "
            f"was {min(same):.2f}–{max(same):.2f}× that of `off` (geometric mean "
            f"{geo:.2f}): the spread of two identical runs on this shared machine, against "
            "which every ratio below must be read.",
            "",
        ]
    lines += [
        "## Targets",
        "",
        "SmartSpec within 5 % of the best other policy (ratio ≤ 1.05), never more than 5 % "
        "worse than `off` (ratio ≤ 1.05); speed-up = off / smartspec mean latency (target "
        "≥ 1.5× on grounded at light load, the lowest rate; paper: up to 3.2×).",
        "",
        "Per repetition: the same ratio within each repetition (the policies of one "
        "repetition ran minutes apart on the same prompts and arrivals). Load: the 1-minute "
        "load average over the rate's runs (2 cores). CPU s: the process CPU seconds a run "
        "took (pooled), SmartSpec's over the least of the other policies' and over `off`'s: "
        "the work each policy made the machine do, which the other jobs' load swings move "
        "far less than wall-clock latency.",
        "",
        "| workload | proposer | rate | load | smartspec / best other | per repetition "
        "| smartspec / off | per repetition | speed-up | CPU s: smartspec / best, / off |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *checks,
        "",
    ]
    exact = data.get("exactness")
    if exact:
        lines += [
            "## Greedy exactness and the precision",
            "",
            "The same 10 grounded requests, all at once: `off` twice, `fixed:3` (prompt "
            "lookup) once; the share of requests with identical tokens.",
            "",
            "| dtype | off vs off | fixed:3 vs off |",
            "| --- | ---: | ---: |",
            *(
                f"| {name} | {v['off_vs_off']:.0%} | {v['fixed3_vs_off']:.0%} |"
                for name, v in exact.items()
            ),
            "",
        ]
    osd = data.get("osd")
    if osd:
        delta = osd["acceptance_after"] - osd["acceptance_before"]
        rnd = osd.get("round", {})
        lines += [
            "## Online distillation (one round, shifted workload)",
            "",
            f"{osd['workload']}: {osd['how']}.",
            "",
            f"- acceptance before {osd['acceptance_before']:.3f}, after "
            f"{osd['acceptance_after']:.3f}: **{delta:+.3f}** (target +0.10 … +0.65) "
            f"{'✅' if delta >= 0.10 else '❌'}",
            f"- the round's own held-out records: {rnd.get('before', {}).get('greedy', 0):.3f} "
            f"→ {rnd.get('after', {}).get('greedy', 0):.3f}; {rnd.get('records')} records, "
            f"{rnd.get('train_positions')} positions trained, {rnd.get('vocab_added')} tokens "
            f"added to the draft's vocabulary, {rnd.get('distill', {}).get('steps')} steps in "
            f"{rnd.get('distill', {}).get('seconds', 0):.0f} s; new version "
            f"{rnd.get('version', '— (kept the old one)')}, hot-swapped: {osd.get('swapped')}",
            f"- held-out greedy outputs identical before and after the swap: "
            f"{osd.get('heldout_outputs_unchanged', 0):.0%} of requests (bfloat16 kernels: "
            "a different number of verified tokens changes the batch shapes, and with them "
            "the rounding, so near-ties can flip — see bench/README.md)",
            "",
        ]
    return "\n".join(lines)


def load_target_folder() -> Path:
    from lmaas.config import get_settings
    from lmaas.engine.model_files import materialize_model

    settings = get_settings()
    return materialize_model(settings.resolved_base_model, settings.model_cache_dir)


if __name__ == "__main__":
    main()
