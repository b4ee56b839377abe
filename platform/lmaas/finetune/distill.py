"""Distilling a draft into its target: forward KL at chosen positions, offline and online (OSD).

The loss at a position is the forward KL(p_target ‖ q_draft), computed on the target's
top-K tokens plus one "everything else" bucket (a partition of the vocabulary, so it is a
true KL of the coarsened distributions): −Σ_top p_i log q_i − p_rest log q_rest, where the
draft's probabilities are over its own (frequency-ranked) vocabulary and a top-K token the
draft cannot produce falls in the rest. Only the draft's layers, final norm and output
head are trained; the input embeddings stay the target's.

- `distill` trains on given samples and positions (the offline recipe uses every answer
  position of self-generated data);
- `osd_positions` picks, from recorded traffic (`OSDRecord`), the positions where the
  draft was wrong, plus a `correct_fraction` (default 0.25) of as many positions where it
  was right, drawn uniformly — so that it learns what it missed without forgetting what
  it got right;
- `measure_acceptance` is the greedy acceptance (draft argmax = target argmax, teacher
  forced on the target's answers: exactly what greedy speculation verifies) and the mean
  tokens per verification for k proposals.

And the two jobs a worker runs, with progress callbacks:

- `build_default_draft`: the offline recipe — self-generated chat and input-grounded
  data, a frequency-ranked vocabulary, the layer plan with the best measured
  acceptance-per-cost, distillation, held-out acceptance, a new saved version;
- `run_osd_round`: one round of online distillation of a (tenant, model)'s draft on the
  records its runtimes flushed; the new version is saved only if its acceptance on
  held-out records did not drop, and the records used are then removed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from lmaas.engine.speculation.osd_buffer import (
    OSDRecord,
    list_osd_files,
    load_osd_records,
    remove_osd_files,
)
from lmaas.finetune.draft_builder import (
    DraftLM,
    build_draft,
    extend_draft_vocab,
    frequent_tokens,
    latest_draft_version,
    layer_plan,
    load_draft,
    save_draft_version,
)
from lmaas.finetune.draft_corpus import Sample, TeacherSignals, generate_samples, teacher_signals

__all__ = [
    "Acceptance",
    "DistillConfig",
    "DistillResult",
    "agreement",
    "build_default_draft",
    "default_draft_samples",
    "distill",
    "measure_acceptance",
    "osd_positions",
    "run_osd_round",
    "speculation_walk",
]

Progress = Callable[[int, int, str], None]


@dataclass
class DistillConfig:
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_sequences: int = 8
    max_len: int = 512
    grad_clip: float = 1.0
    warmup_steps: int = 10
    seed: int = 0
    bf16: bool = True  # autocast on CPU (and CUDA)


@dataclass
class DistillResult:
    steps: int
    first_loss: float
    last_loss: float
    seconds: float


@dataclass
class Acceptance:
    greedy: float  # P(draft argmax == target argmax) over the measured positions
    tokens_per_step: dict[int, float]  # k → mean tokens per verification of k proposals
    positions: int


def _window(
    tokens: Sequence[int], positions: torch.Tensor, max_len: int
) -> tuple[list[int], torch.Tensor, int]:
    """The last `max_len` tokens up to the last position; positions inside it, shifted."""
    end = int(positions.max()) + 1 if len(positions) else len(tokens)
    start = max(0, end - max_len)
    keep = positions >= max(start, 1)
    return list(tokens[start:end]), positions[keep] - start, start


def _kl_loss(
    draft: DraftLM, logits: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor
) -> torch.Tensor:
    """Forward KL on top-K + rest; `logits` (N, Vd) over the draft vocabulary."""
    logq = logits.float().log_softmax(-1)
    if draft.vocab_ids.numel():
        lookup = torch.full((draft.full_vocab_size,), -1, dtype=torch.long, device=logits.device)
        lookup[draft.vocab_ids] = torch.arange(draft.vocab_ids.numel(), device=logits.device)
        idx = lookup[top_ids]
    else:
        idx = top_ids
    present = idx >= 0
    p = top_logprobs.exp() * present
    logq_top = logq.gather(-1, idx.clamp(min=0))
    q_top = (logq_top.exp() * present).sum(-1)
    p_rest = (1.0 - p.sum(-1)).clamp(min=0.0)
    logq_rest = torch.log1p(-q_top.clamp(max=1 - 1e-6))
    loss = -(p * logq_top).sum(-1) - p_rest * logq_rest
    return loss.mean()


def distill(
    draft: DraftLM,
    sequences: Sequence[Sequence[int]],
    signals: Sequence[TeacherSignals],
    config: DistillConfig | None = None,
    *,
    progress: Progress | None = None,
) -> DistillResult:
    """Train `draft` in place on the teacher's top-K at `signals[i].positions` of `sequences[i]`."""
    cfg = config or DistillConfig()
    if len(sequences) != len(signals):
        raise ValueError(f"{len(sequences)} sequences but {len(signals)} teacher signals")
    usable = [i for i, s in enumerate(signals) if len(s.positions)]
    if not usable:
        raise ValueError("nothing to distill: no positions with teacher signals")
    model = draft.model
    device = next(model.parameters()).device
    model.model.embed_tokens.weight.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress_frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress_frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    first = last = float("nan")
    started = time.monotonic()
    model.train()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_sequences:
            more = usable[:]
            rng.shuffle(more)
            order += more
        batch, order = order[: cfg.batch_sequences], order[cfg.batch_sequences :]
        windows = [_window(sequences[i], signals[i].positions, cfg.max_len) for i in batch]
        width = max(len(w[0]) for w in windows)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        rows, cols, tops, logps = [], [], [], []
        for r, (i, (toks, pos, start)) in enumerate(zip(batch, windows, strict=True)):
            ids[r, : len(toks)] = torch.tensor(toks)
            mask[r, : len(toks)] = 1
            keep = signals[i].positions >= max(start, 1)
            rows.append(torch.full((len(pos),), r, dtype=torch.long))
            cols.append(pos - 1)  # logits at p-1 predict token p
            tops.append(signals[i].top_ids[keep])
            logps.append(signals[i].top_logprobs[keep])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            hidden = model.model(
                input_ids=ids.to(device), attention_mask=mask.to(device)
            ).last_hidden_state
            picked = hidden[torch.cat(rows).to(device), torch.cat(cols).to(device)]
            logits = model.lm_head(picked)
        loss = _kl_loss(draft, logits, torch.cat(tops).to(device), torch.cat(logps).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        value = float(loss.detach())
        first = value if step == 0 else first
        last = value if step == 0 else 0.9 * last + 0.1 * value
        if progress:
            progress(step + 1, cfg.steps, f"distill loss {last:.3f}")
    model.eval()
    return DistillResult(cfg.steps, first, last, time.monotonic() - started)


@torch.inference_mode()
def agreement(
    draft: DraftLM,
    sequences: Sequence[Sequence[int]],
    signals: Sequence[TeacherSignals],
    *,
    max_len: int = 1024,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Per sequence, whether the draft's argmax equals the teacher's at each signal position."""
    device = next(draft.model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        idx = list(range(start, min(start + batch_size, len(sequences))))
        windows = [_window(sequences[i], signals[i].positions, max_len) for i in idx]
        width = max(len(w[0]) for w in windows)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (toks, _, _) in enumerate(windows):
            ids[r, : len(toks)] = torch.tensor(toks)
            mask[r, : len(toks)] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = draft(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for r, (i, (_, pos, start_at)) in enumerate(zip(idx, windows, strict=True)):
            keep = signals[i].positions >= max(start_at, 1)
            guess = logits[r, pos - 1].argmax(-1).cpu()
            out.append(guess == signals[i].argmax[keep])
    return out


def speculation_walk(agree: Sequence[bool], k: int) -> list[tuple[int, int, int]]:
    """Greedy speculation with k proposals over one answer: (offset, proposed, accepted) per step."""
    steps, s = [], 0
    while s < len(agree):
        proposed = min(k, len(agree) - s)
        m = 0
        while m < proposed and agree[s + m]:
            m += 1
        steps.append((s, proposed, m))
        s += m + 1
    return steps


def measure_acceptance(
    draft: DraftLM,
    sequences: Sequence[Sequence[int]],
    signals: Sequence[TeacherSignals],
    *,
    ks: Sequence[int] = (1, 2, 4, 6),
    max_len: int = 1024,
) -> Acceptance:
    """Greedy acceptance of `draft` against the teacher's argmax at the signal positions."""
    runs = agreement(draft, sequences, signals, max_len=max_len)
    flat = torch.cat(runs) if runs else torch.zeros(0, dtype=torch.bool)
    per_k = {}
    for k in ks:
        walks = [speculation_walk(a.tolist(), k) for a in runs]
        steps = sum(len(w) for w in walks)
        per_k[k] = sum(m + 1 for w in walks for _, _, m in w) / steps if steps else 1.0
    return Acceptance(float(flat.float().mean()) if len(flat) else 0.0, per_k, len(flat))


def osd_positions(
    records: Sequence[OSDRecord], *, correct_fraction: float = 0.25, seed: int = 0
) -> list[list[int]]:
    """Per record: its wrong positions + `correct_fraction` × as many right ones, at random."""
    if not 0.0 <= correct_fraction <= 1.0:
        raise ValueError(f"correct_fraction must be within [0, 1], got {correct_fraction}")
    rng = random.Random(seed)
    out = []
    for r in records:
        n_right = min(len(r.right), round(correct_fraction * len(r.wrong)))
        out.append(sorted(set(r.wrong) | set(rng.sample(r.right, n_right))))
    return out


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
    select = replace(cfg, steps=max(1, round(select_fraction * cfg.steps)))
    best: tuple[float, DraftLM] | None = None
    for depth, strategy in candidates:
        layers = layer_plan(target.config.num_hidden_layers, depth, strategy)  # type: ignore[arg-type]
        draft = build_draft(target, layers, vocab, base_model=base_model)
        distill(draft, seqs, signals, select, progress=say)
        acc = measure_acceptance(draft, *validation)
        cost = _relative_cost(target.config, depth, len(vocab))
        score = _score(acc, cost)
        report["candidates"].append(
            {"layers": layers, "acceptance": acc.greedy, "cost": cost, "score": score}
        )
        if best is None or score > best[0]:
            best = (score, draft)
    if best is None:
        raise ValueError("no draft candidates given")
    draft = best[1]
    report["layers"] = draft.info.source_layers
    report["selected_after_steps"] = select.steps
    rest = replace(cfg, steps=max(1, cfg.steps - select.steps), warmup_steps=1, seed=cfg.seed + 1)
    result = distill(draft, seqs, signals, rest, progress=say)
    report["distill"] = result.__dict__
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
