"""Speculative decoding end to end: latency per policy under Poisson load, and one OSD round.

    python bench/speculation.py [--quick] [--out bench/results/speculation.json]

Draft (built once, cached in bench/.cache/speculation): `build_default_draft` on the
default model with capped sizes. Placeholder — the rest of the bench follows.
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
