"""Speculative decoding in the step loop: propose before scheduling, verify after the pass.

`Speculator` drives the `speculation` library from `LLMEngine.step` (the recipe of
`lmaas.engine.speculation`):

1. `propose(running, …)` — before the scheduler runs: every decoding request gets a
   `SpecRequest` (its policy: the request's own `speculation`, else the engine's), prompt
   lookup first finds what it could offer, the SmartSpec controller chooses k per request
   under the step's token budget, the proposer (draft model: one batched draft pass per
   draft position) proposes, and the tokens go onto `Sequence.draft_token_ids`. The
   scheduler then schedules each decoding request's last token + drafts as its query
   tokens (with the other requests' prompt chunks) and allocates their cache slots.
2. `verify(entries)` — after the target pass: every speculating request's (1 + k, V)
   logits, in one batched `rejection.verify` (greedy: exactly plain decoding; sampled:
   rejection sampling against the distribution the engine's sampler would draw from).
   The engine then rolls `num_computed_tokens` back past rejected drafts and frees the
   cache blocks past the sequence's end.
3. `end_step(…)` — the step's seconds feed the controller's step-time model; acceptance
   feeds its per-request estimators, `stats` (`snapshot()`: the runtime's metrics) and,
   with a draft model, the OSD recorder (where the draft was right and wrong: what online
   distillation trains on; prompt lookup's misses say nothing about a draft).
4. `release(seq, reason)` — a request ended: the controller and proposer forget it and
   the OSD recorder turns what it saw into a record.

Requests asking for logprobs never speculate (the engine reports logprobs per sampled
token), nor do seeded sampled ones under `smartspec` (`request_policy`).

For the runtime: `LLMEngine(config, osd=OSDRecorder(…))` (or `AsyncEngine(config,
osd=…)`) builds the speculator the config asks for (`create_speculator`: prompt lookup,
or the draft at `config.draft_url`) and records OSD data into the recorder (flushing it is
the runtime's job). A new draft version goes in with `await AsyncEngine.swap_draft(url)`
(loads off the step thread, swaps between two steps) — or `LLMEngine.load_draft_proposer`
then `LLMEngine.set_proposer`. `LLMEngine.stats()["speculation"]` is `Speculator.snapshot()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from lmaas.engine.engine_config import EngineConfig
from lmaas.engine.sampler import SamplingRow
from lmaas.engine.sequence import Sequence, SequenceStatus
from lmaas.engine.speculation.controller import SmartSpecController, SpecPlan, SpecRequest
from lmaas.engine.speculation.metrics import SpecMetrics, SpecStats
from lmaas.engine.speculation.osd_buffer import OSDRecorder
from lmaas.engine.speculation.paged_draft import DraftCacheFull, PagedDraftBackend
from lmaas.engine.speculation.policy import SpecPolicy, parse_policy, resolve_policy
from lmaas.engine.speculation.proposer import Proposer, SpecSequence
from lmaas.engine.speculation.rejection import pad_proposals, verify
from lmaas.engine.speculation.sampling import sampling_probs

__all__ = ["Speculator", "VerifyEntry"]

log = logging.getLogger(__name__)


@dataclass
class _Proposed:
    """What one request proposed this step."""

    tokens: list[int]
    q: torch.Tensor | None  # (k, V) the draft distribution, None for greedy / prompt lookup
    start: int  # its number of tokens before the step (the first proposal's position)


@dataclass
class VerifyEntry:
    """One speculating request of the step: its `num_rows` (1 + k) rows of the step's
    logits from `offset`, and its sampling row."""

    seq: Sequence
    offset: int
    num_rows: int
    row: SamplingRow


class Speculator:
    """Speculative decoding for one engine (see the module docstring)."""

    def __init__(
        self,
        proposer: Proposer,
        *,
        max_k: int,
        policy: str | SpecPolicy | None = "smartspec",
        model_name: str = "",
        metrics: SpecMetrics | None = None,
        osd: OSDRecorder | None = None,
        controller: SmartSpecController | None = None,
    ) -> None:
        if max_k < 0:
            raise ValueError(f"max_k must be >= 0, got {max_k}")
        self.proposer = proposer
        self.max_k = max_k
        self.policy = parse_policy(policy)
        self.controller = controller or SmartSpecController(
            max_k=max_k, proposer="draft" if proposer.kind == "draft" else "ngram"
        )
        self.stats = SpecStats(model=model_name, proposer=proposer.kind, metrics=metrics)
        self.osd = osd
        self.num_swaps = 0
        self.num_draft_cache_full = 0  # steps that skipped speculation for want of draft cache
        self._proposed: dict[int, _Proposed] = {}
        self._specs: list[SpecRequest] = []
        self._ks: list[int] = []
        self._started = 0.0
        self._plan: SpecPlan | None = None
        # Called after each step with what the controller predicted and what happened
        # (`end_step`): a bench's or an operator's trace of the models, off by default.
        self.on_step: Callable[[dict], None] | None = None
        self._lock = threading.Lock()
        self._next_proposer: Proposer | None = None

    # Hot swap ------------------------------------------------------------------------------

    def swap_proposer(self, proposer: Proposer) -> None:
        """Use `proposer` (e.g. a new draft version, loaded off the step thread) from the
        next step on. Thread-safe; takes effect between two steps, so no request is
        dropped: the new proposer has no draft cache yet and rebuilds each sequence's on
        its first `propose` (one catch-up prefill of the draft), and the old one's caches
        are released. Acceptance estimates and the step-time model are kept (they adapt).
        Prompt lookup may give way to a first draft model (`auto` before any draft was
        built) and back: the controller then starts counting the draft's cost."""
        with self._lock:
            self._next_proposer = proposer

    def _apply_swap(self) -> None:
        with self._lock:
            new, self._next_proposer = self._next_proposer, None
        if new is None:
            return
        old = self.proposer
        release_all = getattr(getattr(old, "backend", None), "release_all", None)
        if release_all is not None:
            release_all()
        self.proposer = new
        self.controller.proposer = "draft" if new.kind == "draft" else "ngram"
        self.stats.proposer = new.kind
        self.num_swaps += 1
        log.info("speculation: proposer swapped (%d swaps)", self.num_swaps)

    # The step --------------------------------------------------------------------------------

    def request_policy(self, seq: Sequence) -> SpecPolicy:
        """The policy `seq` runs under: its own, else the engine's, capped at `max_k`.

        Requests asking for logprobs never speculate; nor do seeded sampled requests under
        `smartspec`: its choices follow measured step times, and the random numbers a
        request draws depend on how many tokens it proposes — the same seed would give
        different outputs on a busy and an idle machine. (Under `off` they are exactly
        those of plain decoding; `fixed:K` keeps them repeatable for the same batch.)"""
        params = seq.params
        if params is None:
            return resolve_policy(self.policy, None, max_k=self.max_k)
        if params.logprobs is not None:
            return SpecPolicy("off")
        policy = resolve_policy(self.policy, params.speculation, max_k=self.max_k)
        if policy.mode == "smartspec" and params.seed is not None and params.temperature > 0:
            return SpecPolicy("off")
        return policy

    def propose(
        self,
        running: Seq[Sequence],
        rows: dict[int, SamplingRow],
        *,
        prefill_tokens: int,
        token_budget: int,
        max_model_len: int,
    ) -> None:
        """Attach drafts to the decoding sequences among `running` (step 1)."""
        self._started = time.perf_counter()
        self._apply_swap()
        self._proposed.clear()
        for seq in running:  # drafts of a request the last step did not schedule are stale
            seq.draft_token_ids = []
        decoding = [
            s
            for s in running
            if s.status is SequenceStatus.RUNNING
            and not s.is_prefilling
            and s.num_computed_tokens == s.num_tokens - 1
        ]
        self._specs, self._ks, self._plan = [], [], None
        if not decoding or self.max_k == 0:
            return
        limits = [
            max(0, min(s.max_tokens - s.num_output_tokens, max_model_len - s.num_tokens) - 1)
            for s in decoding
        ]
        policies = [self.request_policy(s) for s in decoding]
        limits = [m if p.speculates else 0 for m, p in zip(limits, policies, strict=True)]
        views = [self._view(s, rows.get(s.seq_id)) for s in decoding]
        looked_up: list[list[int]] | None = None
        if self.proposer.kind != "draft":
            found = self.proposer.propose(views, [min(self.max_k, m) for m in limits])
            looked_up = found.token_ids
            limits = [len(t) for t in looked_up]
        catch_up = getattr(self.proposer, "catch_up_tokens", None)
        self._specs = [
            SpecRequest(
                s.seq_id,
                s.num_computed_tokens,
                policy,
                s.tenant_id,
                s.adapter_id,
                max_proposals=limit,
                draft_catch_up=catch_up(s.seq_id, v.token_ids) if catch_up and limit else 0,
            )
            for s, v, policy, limit in zip(decoding, views, policies, limits, strict=True)
        ]
        plan = self._plan = self.controller.plan(
            self._specs, prefill_tokens=prefill_tokens, token_budget=token_budget
        )
        ks = plan.ks
        if looked_up is None and any(ks):
            ks = self._fit_draft_cache(decoding, ks)
        if looked_up is not None:
            tokens, probs = [t[:k] for t, k in zip(looked_up, ks, strict=True)], None
        elif any(ks):
            try:
                proposal = self.proposer.propose(views, ks)
            except DraftCacheFull:
                self.num_draft_cache_full += 1
                if self.num_draft_cache_full == 1:
                    log.warning("speculation: the draft cache is full; skipping such steps")
                for s in decoding:
                    self.proposer.release(s.seq_id)
                proposal = None
            tokens = proposal.token_ids if proposal else [[] for _ in decoding]
            probs = proposal.probs if proposal else None
        else:
            tokens, probs = [[] for _ in decoding], None
        self._ks = [len(t) for t in tokens]
        for i, (seq, toks) in enumerate(zip(decoding, tokens, strict=True)):
            if toks:
                seq.draft_token_ids = list(toks)
                q = probs[i] if probs is not None else None
                self._proposed[seq.seq_id] = _Proposed(list(toks), q, seq.num_tokens)

    def _fit_draft_cache(self, decoding: list[Sequence], ks: list[int]) -> list[int]:
        """Speculate only with the requests whose draft cache fits what is free (cheapest
        first), so that a full draft cache costs some requests' proposals, not all."""
        backend = getattr(self.proposer, "backend", None)
        if not isinstance(backend, PagedDraftBackend):
            return ks
        needs = {
            i: backend.blocks_needed(seq.seq_id, seq.num_tokens + ks[i])
            for i, seq in enumerate(decoding)
            if ks[i]
        }
        free = backend.blocks.num_free_blocks
        ks = list(ks)
        for i in sorted(needs, key=needs.__getitem__):
            if needs[i] <= free:
                free -= needs[i]
            else:
                ks[i] = 0
        return ks

    def verify(
        self, logits: torch.Tensor, entries: list[VerifyEntry]
    ) -> list[tuple[list[int], int]]:
        """Verify the proposals of `entries` (their rows of the step's fp32 `logits`) in one
        batched pass (step 2): per entry, the tokens it emits (accepted proposals + one)
        and how many drafts were rejected.

        Greedy entries compare their drafts with the argmax of their rows (one argmax over
        the step's logits, `rejection.verify_greedy`'s rule); sampled ones go through
        `rejection.verify` on the distribution the engine's sampler would draw from."""
        if not entries:
            return []
        proposed = []
        for e in entries:
            # The scheduler may have dropped trailing drafts (budget, free blocks).
            p, n = self._proposed[e.seq.seq_id], e.num_rows - 1
            if not 0 < n <= len(p.tokens):
                raise RuntimeError(f"sequence {e.seq.seq_id}: {n} drafts verified, {p} proposed")
            proposed.append(_Proposed(p.tokens[:n], None if p.q is None else p.q[:n], p.start))
        outcomes: list[tuple[list[int], int] | None] = [None] * len(entries)
        greedy = [b for b, e in enumerate(entries) if e.row.greedy]
        if greedy:
            argmax = logits.argmax(dim=-1).tolist()
            for b in greedy:
                targets = argmax[entries[b].offset : entries[b].offset + entries[b].num_rows]
                drafts = proposed[b].tokens
                accepted = 0
                while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
                    accepted += 1
                outcomes[b] = ([*drafts[:accepted], targets[accepted]], accepted)
        sampled = [b for b, e in enumerate(entries) if not e.row.greedy]
        if sampled:
            for b, result in zip(
                sampled, self._verify_sampled(logits, entries, proposed, sampled), strict=True
            ):
                outcomes[b] = result
        results = []
        for e, p, outcome in zip(entries, proposed, outcomes, strict=True):
            tokens, accepted = outcome or ([], 0)
            k = len(p.tokens)
            seq = e.seq
            self.controller.observe_verification(seq.seq_id, k, accepted)
            self.stats.record_verification(seq.tenant_id, k, accepted)
            if self.osd is not None and self.proposer.kind == "draft":
                self.osd.observe(seq.request_id, seq.tenant_id, p.start, k, accepted)
            results.append((tokens, k - accepted))
        return results

    @staticmethod
    def _verify_sampled(
        logits: torch.Tensor,
        entries: list[VerifyEntry],
        proposed: list[_Proposed],
        which: list[int],
    ) -> list[tuple[list[int], int]]:
        """Rejection sampling for the sampled entries `which`: (tokens, accepted) each."""
        device = logits.device
        width = max(len(proposed[b].tokens) for b in which)
        index = []
        for b in which:  # (B, width + 1) rows; short rows repeat their last (never used)
            e = entries[b]
            index.append([e.offset + min(j, e.num_rows - 1) for j in range(width + 1)])
        rows_index = torch.tensor(index, device=device)
        target = logits.index_select(0, rows_index.flatten()).view(len(which), width + 1, -1)
        rows = [entries[b].row for b in which]
        target_probs = sampling_probs(
            target,
            torch.tensor([r.temperature for r in rows]),
            torch.tensor([r.top_k for r in rows]),
            torch.tensor([r.top_p for r in rows]),
        )
        draft_tokens, num_proposed = pad_proposals(
            [proposed[b].tokens for b in which], width=width, device=device
        )
        draft_probs = None
        if any(proposed[b].q is not None for b in which):
            draft_probs = torch.zeros((len(which), width, target.shape[-1]), device=device)
            for i, b in enumerate(which):
                p = proposed[b]
                n = len(p.tokens)
                if p.q is not None:
                    draft_probs[i, :n] = p.q.to(device)
                else:  # a point mass on each proposal
                    draft_probs[i, torch.arange(n), torch.tensor(p.tokens)] = 1.0
        out = verify(
            target,
            draft_tokens,
            num_proposed,
            greedy=torch.zeros(len(which), dtype=torch.bool, device=device),
            target_probs=target_probs,
            draft_probs=draft_probs,
            generators=[r.generator for r in rows],
        )
        return list(zip(out.tokens(), out.num_accepted.tolist(), strict=True))

    def end_step(self, *, prefill_tokens: int, num_decode_tokens: int) -> None:
        """After the step's tokens are known (step 3; they are on the host, so the device
        is done): its time and what it produced."""
        seconds = time.perf_counter() - self._started
        features = self.controller.features(self._specs, self._ks, prefill_tokens)
        if self.on_step is not None and self._plan is not None:
            self.on_step(
                {
                    "ks": list(self._ks),
                    "policies": [str(s.policy) for s in self._specs],
                    "exploring": self._plan.exploring,
                    "prefill_tokens": prefill_tokens,
                    "predicted_s": self.controller.step_model.predict(features),
                    "measured_s": seconds,
                    "predicted_tokens": self._plan.predicted_tokens,
                    "emitted_tokens": num_decode_tokens,
                }
            )
        self.controller.observe_step(features, seconds)
        if self._specs:
            self.stats.record_step(seconds, self._ks, num_decode_tokens)
        self._proposed.clear()

    def forget_cache(self, seqs: Seq[Sequence]) -> None:
        """`seqs` were preempted: their draft caches go too (they are rebuilt on return)."""
        for seq in seqs:
            self.proposer.release(seq.seq_id)

    def release(self, seq: Sequence, reason: str) -> None:
        """`seq` ended (step 4)."""
        self.controller.release(seq.seq_id)
        self.proposer.release(seq.seq_id)
        self._proposed.pop(seq.seq_id, None)
        if self.osd is not None:
            if reason == "error":
                self.osd.discard(seq.request_id)
            else:
                self.osd.finish(
                    seq.request_id, seq.token_ids, seq.num_prompt_tokens, seq.adapter_id
                )

    @property
    def draft_version(self) -> int | None:
        """The version of the draft model in use (None for prompt lookup)."""
        draft = getattr(getattr(self.proposer, "backend", None), "draft", None)
        return None if draft is None else draft.version

    def snapshot(self) -> dict:
        """Plain-JSON figures (`SpecStats.snapshot`, plus model, proposer, draft version…)."""
        return {
            **self.stats.snapshot(),
            "model": self.stats.model,
            "proposer": self.proposer.kind,
            "draft_version": self.draft_version,
            "policy": str(self.policy),
            "max_k": self.max_k,
            "swaps": self.num_swaps,
        }

    @staticmethod
    def _view(seq: Sequence, row: SamplingRow | None) -> SpecSequence:
        row = row or SamplingRow(temperature=0.0)
        return SpecSequence(
            seq_id=seq.seq_id,
            token_ids=seq.token_ids,
            temperature=0.0 if row.greedy else row.temperature,
            top_k=row.top_k,
            top_p=row.top_p,
            generator=row.generator,
        )


# Building a speculator from the engine's configuration ---------------------------------------


def find_draft(url: str | None) -> tuple[int, str] | None:
    """(version, folder URL) of the draft at `url`: the version named by `url`/LATEST, or
    `url` itself if it is one draft folder (version 0); None when there is none."""
    if not url:
        return None
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    if fs.exists(f"{path}/LATEST"):
        name = fs.cat_file(f"{path}/LATEST").decode().strip()
        return int(name.lstrip("v") or 0), f"{url.rstrip('/')}/{name}"
    if fs.exists(f"{path}/lmaas-draft.json"):
        return 0, url
    return None


def draft_proposer(
    source: object,
    *,
    vocab_size: int,
    num_tokens: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    reuse: Proposer | None = None,
) -> Proposer:
    """A `DraftModelProposer` over the draft `source` (folder, URL or `DraftLM`) on the
    engine's kernels, with a paged draft cache of `num_tokens` tokens — the cache memory
    of the proposer `reuse` (the one it replaces) when it fits, so that a hot swap never
    holds two draft caches."""
    from lmaas.engine.speculation.paged_draft import PagedDraftBackend, load_paged_draft
    from lmaas.engine.speculation.proposer import DraftModelProposer

    draft = load_paged_draft(source, dtype=dtype, device=device)  # type: ignore[arg-type]
    if draft.config.vocab_size != vocab_size:
        raise ValueError(
            f"the draft model's vocabulary ({draft.config.vocab_size} tokens) is not the "
            f"target's ({vocab_size}): a draft must share the target's tokenizer"
        )
    old = getattr(reuse, "backend", None)
    cache = old.kv_cache if isinstance(old, PagedDraftBackend) else None
    backend = PagedDraftBackend(
        draft, num_tokens=num_tokens, block_size=block_size, device=device, kv_cache=cache
    )
    return DraftModelProposer(backend)


def create_speculator(
    config: EngineConfig,
    *,
    vocab_size: int,
    num_cache_tokens: int,
    osd: OSDRecorder | None = None,
    metrics: SpecMetrics | None = None,
) -> Speculator | None:
    """The speculator an `EngineConfig` asks for; None when `speculation_max_k` is 0.

    `auto` falls back to prompt lookup when there is no draft or it cannot be loaded
    (logged); `draft` raises then."""
    from lmaas.engine.speculation.prompt_lookup import PromptLookupProposer

    max_k = config.speculation_max_k
    if max_k <= 0:
        return None
    kind = config.speculation_proposer
    if kind not in ("draft", "prompt_lookup", "auto"):
        raise ValueError(f"unknown speculation proposer {kind!r}: draft, prompt_lookup or auto")
    proposer: Proposer | None = None
    if kind in ("draft", "auto"):
        found = find_draft(config.draft_url)
        if found is None and kind == "draft":
            raise ValueError(
                f"LMAAS_SPECULATION_PROPOSER=draft but there is no draft model at "
                f"{config.draft_url!r} (LMAAS_DRAFT_URL): build one, or use prompt_lookup"
            )
        if found is not None:
            try:
                proposer = draft_proposer(
                    found[1],
                    vocab_size=vocab_size,
                    num_tokens=num_cache_tokens,
                    block_size=config.block_size,
                    dtype=config.dtype,
                    device=config.device,
                )
            except (OSError, ValueError) as exc:  # UnsupportedModelError is a ValueError
                if kind == "draft":
                    raise
                log.warning("speculation: cannot load the draft at %s (%s)", found[1], exc)
            else:
                log.info("speculation: draft model version %d from %s", found[0], found[1])
    if proposer is None:
        proposer = PromptLookupProposer()
    return Speculator(
        proposer,
        max_k=max_k,
        policy=config.speculation,
        model_name=config.model_name,
        metrics=metrics,
        osd=osd,
    )
