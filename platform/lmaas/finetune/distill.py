"""Distilling a draft into its target: forward KL at chosen positions, offline and online (OSD).

The loss at a position is the forward KL(p_target ‖ q_draft), computed on the target's
top-K tokens plus one "everything else" bucket (a partition of the vocabulary, so it is a
true KL of the coarsened distributions): −Σ_top p_i log q_i − p_rest log q_rest, where the
draft's probabilities are over its own (frequency-ranked) vocabulary and a top-K token the
draft cannot produce falls in the rest. Only the draft's layers, final norm and output
head are trained; the input embeddings stay the target's.

- `Distiller` / `distill` train on given samples and positions (the offline recipe uses
  every position of self-generated data, prompts included);
- `osd_positions` picks, from recorded traffic (`OSDRecord`), the positions where the
  draft was wrong, plus a `correct_fraction` (default 0.25) of as many positions where it
  was right, drawn uniformly — so that it learns what it missed without forgetting what
  it got right;
- `measure_acceptance` is the greedy acceptance (draft argmax = target argmax, teacher
  forced on the target's answers: exactly what greedy speculation verifies) and the mean
  tokens per verification for k proposals.

The two jobs a worker runs with these (`build_default_draft`, `run_osd_round`) are in
`draft_jobs.py`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmaas.engine.speculation.osd_buffer import OSDRecord
from lmaas.finetune.draft_builder import DraftLM
from lmaas.finetune.draft_corpus import TeacherSignals

__all__ = [
    "Acceptance",
    "DistillConfig",
    "DistillResult",
    "Distiller",
    "agreement",
    "distill",
    "measure_acceptance",
    "osd_positions",
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


class Distiller:
    """Trains `draft` in place on the teacher's top-K at `signals[i].positions` of
    `sequences[i]`; `run(n)` takes n more steps of one schedule of `config.steps` steps
    (warm-up, then cosine down to a tenth), so that training can stop and go on."""

    def __init__(
        self,
        draft: DraftLM,
        sequences: Sequence[Sequence[int]],
        signals: Sequence[TeacherSignals],
        config: DistillConfig | None = None,
    ) -> None:
        cfg = self.config = config or DistillConfig()
        if len(sequences) != len(signals):
            raise ValueError(f"{len(sequences)} sequences but {len(signals)} teacher signals")
        self.usable = [i for i, s in enumerate(signals) if len(s.positions)]
        if not self.usable:
            raise ValueError("nothing to distill: no positions with teacher signals")
        self.draft, self.sequences, self.signals = draft, sequences, signals
        model = draft.model
        model.model.embed_tokens.weight.requires_grad_(False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)

        def lr_at(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []
        self.step = 0
        self.first_loss = self.last_loss = float("nan")
        self.seconds = 0.0

    def _batch(self) -> list[int]:
        n = self.config.batch_sequences
        if len(self.order) < n:
            more = self.usable[:]
            self.rng.shuffle(more)
            self.order += more
        batch, self.order = self.order[:n], self.order[n:]
        return batch

    def run(
        self, num_steps: int | None = None, *, progress: Progress | None = None
    ) -> DistillResult:
        """Take `num_steps` steps (default: the rest of the schedule)."""
        cfg, model = self.config, self.draft.model
        todo = cfg.steps - self.step if num_steps is None else num_steps
        device = next(model.parameters()).device
        started = time.monotonic()
        model.train()
        for n in range(todo):
            batch = self._batch()
            windows = [
                _window(self.sequences[i], self.signals[i].positions, cfg.max_len) for i in batch
            ]
            width = max(len(w[0]) for w in windows)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            rows, cols, tops, logps = [], [], [], []
            for r, (i, (toks, pos, start)) in enumerate(zip(batch, windows, strict=True)):
                ids[r, : len(toks)] = torch.tensor(toks)
                mask[r, : len(toks)] = 1
                keep = self.signals[i].positions >= max(start, 1)
                rows.append(torch.full((len(pos),), r, dtype=torch.long))
                cols.append(pos - 1)  # logits at p-1 predict token p
                tops.append(self.signals[i].top_ids[keep])
                logps.append(self.signals[i].top_logprobs[keep])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                hidden = model.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device)
                ).last_hidden_state
                picked = hidden[torch.cat(rows).to(device), torch.cat(cols).to(device)]
                logits = model.lm_head(picked)
            loss = _kl_loss(
                self.draft, logits, torch.cat(tops).to(device), torch.cat(logps).to(device)
            )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            value = float(loss.detach())
            if self.step == 0:
                self.first_loss = self.last_loss = value
            else:
                self.last_loss = 0.9 * self.last_loss + 0.1 * value
            self.step += 1
            if progress:
                progress(n + 1, todo, f"distill loss {self.last_loss:.3f}")
        model.eval()
        self.seconds += time.monotonic() - started
        return DistillResult(self.step, self.first_loss, self.last_loss, self.seconds)


def distill(
    draft: DraftLM,
    sequences: Sequence[Sequence[int]],
    signals: Sequence[TeacherSignals],
    config: DistillConfig | None = None,
    *,
    progress: Progress | None = None,
) -> DistillResult:
    """Train `draft` in place for `config.steps` steps (see `Distiller`)."""
    return Distiller(draft, sequences, signals, config).run(progress=progress)


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
