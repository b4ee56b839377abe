"""Tasks `lmaas.speculation.build_draft` and `lmaas.speculation.osd_round`: the draft jobs.

- `build_draft(model, options)`: the offline recipe (`finetune.draft_jobs.
  build_default_draft`) for the deployment's base model: self-generated chat and grounded
  data, the layer plan chosen by predicted speed-up, distillation; saved as the next
  version of the model's shared draft, which runtimes pick up by themselves.
- `osd_round(tenant_id, model, options)`: one round of online distillation of the
  tenant's draft on what runtimes recorded of its traffic (forward KL at the positions
  where the draft was wrong, plus some it got right). A tenant's first round starts its
  own lineage from the shared draft. The new version is saved only if its acceptance on
  held-out records did not drop; the records used are then deleted. Runtimes queue it
  (`LMAAS_OSD_ROUND_RECORDS`, `LMAAS_OSD_ROUND_PERIOD_S`).

Both load the deployment's base model (`LMAAS_BASE_MODEL`), log their progress, and
return their report (plain JSON: every measurement). `options` (a JSON object, optional)
overrides sizes — see `BUILD_OPTIONS` and `OSD_OPTIONS`; unknown keys are refused.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from celery import Task, shared_task

from lmaas.config import Settings
from lmaas.engine.engine_config import resolve_dtype
from lmaas.engine.model_files import materialize_model
from lmaas.engine.speculation.osd_buffer import list_osd_files
from lmaas.finetune.distill import DistillConfig
from lmaas.finetune.draft_builder import latest_draft_version, load_draft, save_draft_version
from lmaas.finetune.draft_jobs import build_default_draft, default_draft_samples, run_osd_round
from lmaas.finetune.draft_locations import DraftLocations
from lmaas.tasks import BUILD_DRAFT, OSD_ROUND
from lmaas.worker.app import worker_context

__all__ = ["BUILD_OPTIONS", "OSD_OPTIONS", "build_draft", "osd_round"]

log = logging.getLogger(__name__)

BUILD_OPTIONS: dict[str, Any] = {
    "num_train": 96,  # self-generated training samples (half chat, half grounded)
    "num_heldout": 16,  # held-out samples per workload, for the acceptance report
    "max_new_tokens": 96,  # answer length of the self-generated samples
    "steps": 300,  # distillation steps (a fifth spent choosing the layer plan)
    "depths": [2, 4, 6],  # candidate draft depths (bottom layers + the last one)
    "vocab_size": 8192,  # the draft's frequency-ranked output vocabulary
    "lr": 1e-3,
    "bf16": True,  # bfloat16 autocast and teacher where the hardware has it
}
OSD_OPTIONS: dict[str, Any] = {
    "steps": None,  # None = LMAAS_OSD_STEPS
    "lr": 5e-4,
    "correct_fraction": 0.25,  # right positions trained on, per wrong one
    "heldout_fraction": 0.2,  # records kept aside to decide whether the round helped
    "bf16": True,
}


def _options(defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(given or {})}


def _progress(job: str):  # type: ignore[no-untyped-def]
    """A progress callback that logs at most every 10 s (and each phase's end)."""
    last = [0.0]

    def say(done: int, total: int, what: str) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= 10:
            last[0] = now
            log.info("%s: %s %d/%d", job, what, done, total)

    return say


def _load_target(
    settings: Settings, model: str, bf16: bool
) -> tuple[torch.nn.Module, torch.nn.Module, Path]:
    """The deployment's base model (float32), a faster copy for inference, its folder."""
    from transformers import AutoModelForCausalLM

    if model != settings.model_name:
        raise ValueError(
            f"this worker's base model is {settings.model_name!r} (LMAAS_MODEL_NAME), not {model!r}"
        )
    folder = materialize_model(settings.resolved_base_model, settings.model_cache_dir)
    target = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fast = target
    if bf16 and resolve_dtype("auto", torch.device("cpu")) is torch.bfloat16:
        fast = copy.deepcopy(target).to(torch.bfloat16).eval()
    return target, fast, folder


@shared_task(name=BUILD_DRAFT, bind=True, acks_late=True)
def build_draft(self: Task, model: str, options: dict[str, Any] | None = None) -> dict:
    """Build `model`'s shared draft (module docstring); returns the recipe's report."""
    settings = worker_context(self.app).settings
    opts = _options(BUILD_OPTIONS, options)
    root = DraftLocations.from_settings(settings).shared_drafts(model)
    started = time.monotonic()
    log.info("build_draft %s: into %s with %s", model, root, opts)
    from transformers import AutoTokenizer

    target, fast, folder = _load_target(settings, model, opts["bf16"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    say = _progress(f"build_draft {model}")
    samples = default_draft_samples(
        fast,
        tokenizer,
        num_train=opts["num_train"],
        num_heldout=opts["num_heldout"],
        max_new_tokens=opts["max_new_tokens"],
        progress=say,
    )
    report = build_default_draft(
        target,
        tokenizer,
        root,
        samples=samples,
        inference_model=fast,
        candidates=[(d, "first_last") for d in opts["depths"]],
        vocab_size=opts["vocab_size"],
        config=DistillConfig(steps=opts["steps"], lr=opts["lr"], bf16=opts["bf16"]),
        base_model=folder.name,
        progress=say,
    )
    report["seconds"] = time.monotonic() - started
    log.info(
        "build_draft %s: version %s (layers %s), held-out acceptance %s, in %.0fs",
        model,
        report["version"],
        report["layers"],
        {w: round(a["greedy"], 3) for w, a in report["after"].items()},
        report["seconds"],
    )
    return report


def _start_lineage(locations: DraftLocations, tenant_id: str, model: str) -> str | None:
    """The tenant's draft root, seeded with the shared draft on its first round."""
    root = locations.tenant_drafts(tenant_id, model)
    if latest_draft_version(root) is not None:
        return root
    shared = latest_draft_version(locations.shared_drafts(model))
    if shared is None:
        return None
    draft = load_draft(shared[1])
    draft.info.note = f"started from shared v{shared[0]}"
    save_draft_version(draft, root)
    return root


@shared_task(name=OSD_ROUND, bind=True, acks_late=True)
def osd_round(
    self: Task, tenant_id: str, model: str, options: dict[str, Any] | None = None
) -> dict:
    """One OSD round for (tenant, model) (module docstring); returns its report."""
    settings = worker_context(self.app).settings
    opts = _options(OSD_OPTIONS, options)
    locations = DraftLocations.from_settings(settings)
    if not list_osd_files(locations.osd, tenant_id, model):
        return {"skipped": f"no records of {tenant_id}/{model} to distil on"}
    root = _start_lineage(locations, tenant_id, model)
    if root is None:
        log.warning("osd_round %s/%s: no shared draft yet (run build_draft)", tenant_id, model)
        return {"skipped": f"no draft of {model} to distil: run {BUILD_DRAFT} first"}
    target, fast, _ = _load_target(settings, model, opts["bf16"])
    started = time.monotonic()
    report = run_osd_round(
        target,
        root,
        locations.osd,
        tenant_id,
        model,
        config=DistillConfig(
            steps=opts["steps"] or settings.osd_steps, lr=opts["lr"], bf16=opts["bf16"]
        ),
        correct_fraction=opts["correct_fraction"],
        heldout_fraction=opts["heldout_fraction"],
        inference_model=fast,
        progress=_progress(f"osd_round {tenant_id}/{model}"),
    )
    report["seconds"] = time.monotonic() - started
    if "skipped" in report:
        log.info("osd_round %s/%s: %s", tenant_id, model, report["skipped"])
    else:
        log.info(
            "osd_round %s/%s: held-out acceptance %.3f -> %.3f on %d records: %s",
            tenant_id,
            model,
            report["before"]["greedy"],
            report["after"]["greedy"],
            report["records"],
            f"version {report['version']}" if "version" in report else "kept the old draft",
        )
    return report
