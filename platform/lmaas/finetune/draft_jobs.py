"""The draft jobs a worker runs: build the default model's draft, and one round of OSD.

- `build_default_draft`: the offline recipe — self-generated chat and input-grounded
  data (`draft_corpus`), a frequency-ranked vocabulary, the candidate layer plans each
  distilled for a fifth of the steps and scored by predicted speed-up (acceptance per
  cost) on a validation slice, the winner trained on for the rest of the same schedule,
  held-out acceptance, a new saved version;
- `run_osd_round`: online distillation of a (tenant, model)'s draft on the records its
  runtimes flushed (`OSDRecorder`): the vocabulary grows by the tokens the traffic needed
  and the draft lacked, forward KL at the wrong positions plus a quarter as many right
  ones; the new version is saved only if its acceptance on held-out records did not drop,
  and the records used are then removed.

Both take a progress callback `(done, total, what)` and return a report (plain JSON) with
every measurement.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from lmaas.engine.speculation.osd_buffer import (
    list_osd_files,
    load_osd_records,
    remove_osd_files,
)
from lmaas.finetune.distill import (
    Acceptance,
    DistillConfig,
    Distiller,
    Progress,
    distill,
    measure_acceptance,
    osd_positions,
)
from lmaas.finetune.draft_builder import (
    build_draft,
    extend_draft_vocab,
    frequent_tokens,
    latest_draft_version,
    layer_plan,
    load_draft,
    save_draft_version,
)
from lmaas.finetune.draft_corpus import Sample, TeacherSignals, generate_samples, teacher_signals

__all__ = ["build_default_draft", "default_draft_samples", "run_osd_round"]


def _relative_cost(target_config: object, depth: int, draft_vocab: int) -> float:
    """Multiply-adds per token of a draft relative to its target (layers + output head)."""
    h = target_config.hidden_size  # type: ignore[attr-defined]
    per_layer = (
        2 * h * h
        + 2 * h * (h // target_config.num_attention_heads) * target_config.num_key_value_heads
    )  # type: ignore[attr-defined]
    per_layer += 3 * h * target_config.intermediate_size  # type: ignore[attr-defined]
    target = target_config.num_hidden_layers * per_layer + h * target_config.vocab_size  # type: ignore[attr-defined]
    return (depth * per_layer + h * draft_vocab) / target


def _score(acc: Acceptance, cost: float) -> float:
    """Best predicted speed-up over k: tokens per step / (1 + k · draft cost)."""
    return max(t / (1 + k * cost) for k, t in acc.tokens_per_step.items())


def default_draft_samples(
    model: torch.nn.Module,
    tokenizer: object,
    *,
    num_train: int = 96,
    num_heldout: int = 16,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, list[Sample]]:
    """The recipe's data: `train` (chat + grounded), held-out `chat` and `grounded`."""

    def gen(workload: str, num: int, split: str) -> list[Sample]:
        return generate_samples(
            model,
            tokenizer,
            workload,
            num,
            split=split,
            max_new_tokens=max_new_tokens,  # type: ignore[arg-type]
            batch_size=batch_size,
            progress=progress,
        )

    half = num_train // 2
    return {
        "train": gen("chat", half, "train") + gen("grounded", num_train - half, "train"),
        "chat": gen("chat", num_heldout, "heldout"),
        "grounded": gen("grounded", num_heldout, "heldout"),
    }


def _answer_signals(
    model: torch.nn.Module, samples: Sequence[Sample], progress: Progress | None = None
) -> tuple[list[list[int]], list[TeacherSignals]]:
    seqs = [s.token_ids for s in samples]
    positions = [range(s.prompt_len, len(s.token_ids)) for s in samples]
    return seqs, teacher_signals(model, seqs, positions, progress=progress)


def build_default_draft(
    target: torch.nn.Module,
    tokenizer: object,
    out_root: str,
    *,
    samples: dict[str, list[Sample]] | None = None,
    inference_model: torch.nn.Module | None = None,
    candidates: Sequence[tuple[int, str]] = (
        (2, "first_last"),
        (4, "first_last"),
        (6, "first_last"),
    ),
    select_fraction: float = 0.2,
    train_on_prompts: bool = True,
    vocab_size: int = 8192,
    config: DistillConfig | None = None,
    base_model: str = "",
    progress: Progress | None = None,
) -> dict:
    """The offline recipe (module docstring); returns a report with every measurement.

    `samples` as made by `default_draft_samples` (made here when None); `inference_model`
    a faster copy of `target` (e.g. bfloat16) for generation and teacher signals. Each
    candidate layer plan is distilled for `select_fraction` of the steps and scored by
    its predicted speed-up on a validation slice of the training data; the winner goes on
    for the remaining steps. With `train_on_prompts`, prompt positions are trained on too
    (free data: no generation needed for them), answers alone are measured.
    """
    say = progress or (lambda done, total, what: None)
    cfg = config or DistillConfig()
    teacher = inference_model or target
    if samples is None:
        samples = default_draft_samples(teacher, tokenizer, progress=say)
    cut = max(1, len(samples["train"]) // 6)
    train, valid = samples["train"][cut:], samples["train"][:cut]
    seqs = [s.token_ids for s in train]
    first = (lambda s: 1) if train_on_prompts else (lambda s: s.prompt_len)
    signals = teacher_signals(
        teacher, seqs, [range(first(s), len(s.token_ids)) for s in train], progress=say
    )
    validation = _answer_signals(teacher, valid)
    held = {w: _answer_signals(teacher, samples[w]) for w in ("chat", "grounded")}
    special = list(getattr(tokenizer, "all_special_ids", []))
    vocab = frequent_tokens(seqs, target.config.vocab_size, vocab_size, always=special)
    report: dict = {"vocab_size": len(vocab), "candidates": []}
    select_steps = max(1, round(select_fraction * cfg.steps))
    best: tuple[float, Distiller] | None = None
    for depth, strategy in candidates:
        layers = layer_plan(target.config.num_hidden_layers, depth, strategy)  # type: ignore[arg-type]
        trainer = Distiller(
            build_draft(target, layers, vocab, base_model=base_model), seqs, signals, cfg
        )
        trainer.run(select_steps, progress=say)
        acc = measure_acceptance(trainer.draft, *validation)
        cost = _relative_cost(target.config, depth, len(vocab))
        score = _score(acc, cost)
        report["candidates"].append(
            {"layers": layers, "acceptance": acc.greedy, "cost": cost, "score": score}
        )
        if best is None or score > best[0]:
            best = (score, trainer)
    if best is None:
        raise ValueError("no draft candidates given")
    trainer = best[1]
    draft = trainer.draft
    report["layers"] = draft.info.source_layers
    report["selected_after_steps"] = select_steps
    report["distill"] = trainer.run(progress=say).__dict__  # the rest of the same schedule
    report["after"] = {w: measure_acceptance(draft, *h).__dict__ for w, h in held.items()}
    draft.info.acceptance = report["after"]["chat"]["greedy"]
    draft.info.note = "offline: chat + grounded self-generated"
    report["version"], report["url"] = save_draft_version(draft, out_root)
    report["relative_cost"] = _relative_cost(target.config, len(report["layers"]), len(vocab))
    return report


def run_osd_round(
    target: torch.nn.Module,
    draft_root: str,
    osd_root: str,
    tenant_id: str,
    model_name: str,
    *,
    config: DistillConfig | None = None,
    correct_fraction: float = 0.25,
    heldout_fraction: float = 0.2,
    max_tokens: int = 2_000_000,
    max_new_vocab: int = 1024,
    inference_model: torch.nn.Module | None = None,
    progress: Progress | None = None,
) -> dict:
    """One OSD round for (tenant, model): distil the latest draft on its recorded traffic."""
    say = progress or (lambda done, total, what: None)
    teacher = inference_model or target
    latest = latest_draft_version(draft_root)
    if latest is None:
        raise FileNotFoundError(
            f"no draft under {draft_root}: build one first (build_default_draft)"
        )
    files = list_osd_files(osd_root, tenant_id, model_name)
    records = load_osd_records(files, max_tokens=max_tokens)
    if len(records) < 2:
        return {
            "skipped": f"only {len(records)} records for {tenant_id}/{model_name}",
            "version": latest[0],
        }
    draft = load_draft(latest[1])
    rng = random.Random(0)
    order = list(range(len(records)))
    rng.shuffle(order)
    cut = max(1, round(heldout_fraction * len(records)))
    held, train = [records[i] for i in order[:cut]], [records[i] for i in order[cut:]]
    held_seqs = [r.token_ids for r in held]
    held_signals = teacher_signals(teacher, held_seqs, [sorted(r.wrong + r.right) for r in held])
    before = measure_acceptance(draft, held_seqs, held_signals)
    # Tokens the traffic needs that the draft's vocabulary lacks (e.g. code indentation).
    counts: dict[int, int] = {}
    for r in train:
        for p in r.wrong:
            counts[r.token_ids[p]] = counts.get(r.token_ids[p], 0) + 1
    missing = sorted((t for t, n in counts.items() if n >= 2), key=lambda t: -counts[t])
    added = extend_draft_vocab(
        draft, missing[:max_new_vocab], target.get_output_embeddings().weight
    )
    positions = osd_positions(train, correct_fraction=correct_fraction)
    seqs = [r.token_ids for r in train]
    signals = teacher_signals(teacher, seqs, positions, progress=say)
    result = distill(draft, seqs, signals, config, progress=say)
    after = measure_acceptance(draft, held_seqs, held_signals)
    report = {
        "records": len(records),
        "train_positions": sum(len(p) for p in positions),
        "vocab_added": added,
        "before": before.__dict__,
        "after": after.__dict__,
        "distill": result.__dict__,
    }
    if after.greedy + 1e-3 < before.greedy:
        report["kept"] = latest[0]  # worse on held-out traffic: keep serving the old one
        return report
    draft.info.acceptance = after.greedy
    draft.info.note = f"osd round on {len(train)} records of {tenant_id}"
    report["version"], report["url"] = save_draft_version(draft, draft_root)
    remove_osd_files(files)
    return report
