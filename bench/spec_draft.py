"""Draft for the default model: acceptance after the offline recipe, and before/after one OSD round.

    python bench/spec_draft.py [--quick] [--out bench/results/spec_draft.json]

1. Self-generated data (chat + input-grounded, SmolLM2-135M-Instruct's own greedy answers),
   the recipe of `lmaas.finetune.distill.build_default_draft`: candidate layer plans
   measured, the best distilled; greedy acceptance on held-out chat and grounded prompts.
2. A shifted workload (Python code prompts) served with that draft: what the runtime's
   `OSDRecorder` records (greedy speculation, k = 4) is flushed to files, one
   `run_osd_round` distils on it, and acceptance on held-out code prompts is measured with
   the draft before and after.
3. Prompt lookup (n-gram, k = 4) on the same held-out answers, for comparison.

Generations are cached under $LMAAS_HOME/bench-cache (deterministic: greedy decoding).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lmaas.config import get_settings
from lmaas.engine.model_files import materialize_model
from lmaas.engine.speculation.osd_buffer import OSDRecorder
from lmaas.engine.speculation.prompt_lookup import NgramIndex
from lmaas.finetune.distill import (
    DistillConfig,
    agreement,
    measure_acceptance,
    speculation_walk,
)
from lmaas.finetune.draft_builder import latest_draft_version, load_draft
from lmaas.finetune.draft_corpus import Sample, generate_samples, teacher_signals
from lmaas.finetune.draft_jobs import build_default_draft, default_draft_samples, run_osd_round

console = Console()


def cached(path: Path, make):  # type: ignore[no-untyped-def]
    if path.is_file():
        data = json.loads(path.read_text())
        return {k: [Sample(**s) for s in v] for k, v in data.items()}
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: [s.__dict__ for s in v] for k, v in value.items()}))
    return value


def prompt_lookup_walk(samples: list[Sample], k: int = 4) -> dict:
    """Greedy speculation with prompt lookup (k tokens) over the target's own answers."""
    steps = emitted = proposed = accepted = matched = 0
    for s in samples:
        tokens, pos = s.token_ids, s.prompt_len
        index = NgramIndex(tokens[:pos], max_n=4)
        while pos < len(tokens):
            proposal = index.propose(k)
            m = 0
            while m < len(proposal) and pos + m < len(tokens) and proposal[m] == tokens[pos + m]:
                m += 1
            n = min(m + 1, len(tokens) - pos)
            index.extend(tokens[pos : pos + n])
            pos += n
            steps, emitted, proposed, accepted = (
                steps + 1,
                emitted + n,
                proposed + len(proposal),
                accepted + m,
            )
            matched += bool(proposal)
    return {
        "k": k,
        "tokens_per_step": emitted / steps,
        "acceptance": accepted / max(proposed, 1),
        "steps_with_a_proposal": matched / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and few steps (~10 min)")
    parser.add_argument("--out", default="bench/results/spec_draft.json")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    q = args.quick
    sizes = {
        "num_train": 24 if q else 96,
        "num_heldout": 8 if q else 16,
        "num_traffic": 16 if q else 48,
        "max_new_tokens": 48 if q else 96,
        "offline_steps": 30 if q else 300,
        "osd_steps": 20 if q else 60,
    }
    settings = get_settings()
    folder = materialize_model(settings.resolved_base_model, settings.model_cache_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    target = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fast = copy.deepcopy(target).to(torch.bfloat16).eval()  # generation and teacher signals
    cache = settings.home / "bench-cache" / f"spec-draft-{'quick' if q else 'full'}"
    work = settings.home / "bench-spec-draft"
    shutil.rmtree(work, ignore_errors=True)  # a fresh draft history each run
    draft_root, osd_root = str(work / "drafts"), str(work / "osd")
    results: dict = {"sizes": sizes, "timings_s": {}}

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("starting", total=1)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        t0 = time.monotonic()
        samples = cached(
            cache / "offline.json",
            lambda: default_draft_samples(
                fast,
                tokenizer,
                num_train=sizes["num_train"],
                num_heldout=sizes["num_heldout"],
                max_new_tokens=sizes["max_new_tokens"],
                batch_size=32,
                progress=progress,
            ),
        )
        shifted = cached(
            cache / "code.json",
            lambda: {
                "traffic": generate_samples(
                    fast,
                    tokenizer,
                    "code",
                    sizes["num_traffic"],
                    max_new_tokens=sizes["max_new_tokens"],
                    batch_size=32,
                    progress=progress,
                ),
                "heldout": generate_samples(
                    fast,
                    tokenizer,
                    "code",
                    sizes["num_heldout"],
                    split="heldout",
                    max_new_tokens=sizes["max_new_tokens"],
                    batch_size=32,
                    progress=progress,
                ),
            },
        )
        results["timings_s"]["generate"] = time.monotonic() - t0

        t0 = time.monotonic()
        report = build_default_draft(
            target,
            tokenizer,
            draft_root,
            samples=samples,
            inference_model=fast,
            config=DistillConfig(steps=sizes["offline_steps"]),
            base_model=folder.name,
            progress=progress,
        )
        results["offline"] = report
        results["timings_s"]["offline"] = time.monotonic() - t0

        # Serve the shifted workload with draft v1: what the runtime records.
        t0 = time.monotonic()
        version, url = latest_draft_version(draft_root)  # type: ignore[misc]
        draft = load_draft(url)
        traffic = shifted["traffic"]
        seqs = [s.token_ids for s in traffic]
        signals = teacher_signals(
            fast, seqs, [range(s.prompt_len, len(s.token_ids)) for s in traffic]
        )
        recorder = OSDRecorder(osd_root, "smollm2", flush_tokens=10**9)
        for n, (sample, agree) in enumerate(
            zip(traffic, agreement(draft, seqs, signals), strict=True)
        ):
            for offset, proposed, accepted in speculation_walk(agree.tolist(), 4):
                recorder.observe(n, "bench-tenant", sample.prompt_len + offset, proposed, accepted)
            recorder.finish(n, sample.token_ids, sample.prompt_len)
        recorder.flush()
        held = shifted["heldout"]
        held_seqs = [s.token_ids for s in held]
        held_signals = teacher_signals(
            fast, held_seqs, [range(s.prompt_len, len(s.token_ids)) for s in held]
        )
        before = measure_acceptance(draft, held_seqs, held_signals)
        osd = run_osd_round(
            target,
            draft_root,
            osd_root,
            "bench-tenant",
            "smollm2",
            inference_model=fast,
            config=DistillConfig(steps=sizes["osd_steps"], lr=5e-4),
            progress=progress,
        )
        after_draft = load_draft(latest_draft_version(draft_root)[1])  # type: ignore[index]
        after = measure_acceptance(after_draft, held_seqs, held_signals)
        chat = samples["chat"]
        chat_seqs = [s.token_ids for s in chat]
        chat_signals = teacher_signals(
            fast, chat_seqs, [range(s.prompt_len, len(s.token_ids)) for s in chat]
        )
        results["osd"] = {
            "workload": "code (shifted)",
            "acceptance_before": before.greedy,
            "acceptance_after": after.greedy,
            "tokens_per_step_before": before.tokens_per_step,
            "tokens_per_step_after": after.tokens_per_step,
            "chat_acceptance_after_osd": measure_acceptance(
                after_draft, chat_seqs, chat_signals
            ).greedy,
            "round": osd,
            "draft_version_before": version,
        }
        results["timings_s"]["osd"] = time.monotonic() - t0

    results["prompt_lookup"] = {
        "chat": prompt_lookup_walk(samples["chat"]),
        "grounded": prompt_lookup_walk(samples["grounded"]),
        "code": prompt_lookup_walk(shifted["heldout"]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    off = results["offline"]
    for c in off["candidates"]:
        console.print(
            f"candidate layers {c['layers']}: acceptance {c['acceptance']:.3f} after "
            f"{off['selected_after_steps']} steps, relative cost {c['cost']:.3f}, score {c['score']:.3f}"
        )
    console.print(f"chosen {off['layers']}, vocabulary {off['vocab_size']}")
    for w in ("chat", "grounded"):
        a = off["after"][w]
        console.print(
            f"{w}: greedy acceptance {a['greedy']:.3f}, tokens per step {a['tokens_per_step']}"
        )
    for w, v in results["prompt_lookup"].items():
        console.print(
            f"prompt lookup on {w}: acceptance {v['acceptance']:.3f}, "
            f"tokens per step {v['tokens_per_step']:.2f} (k = 4)"
        )
    console.print(
        f"OSD on code: acceptance {results['osd']['acceptance_before']:.3f} → {results['osd']['acceptance_after']:.3f}"
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
