"""Iteration-level scheduling: which sequences run in the next forward pass, and how many tokens.

Plain Python (no torch). Each step fills a token budget: running sequences first (decodes
before prompt chunks; a decode contributes its last token plus any draft tokens a proposer
attached), then waiting sequences admitted in virtual-token-counter order across tenants
(`fair_share.VirtualTokenCounter`), their prompts cut into chunks that fit what is left of
the budget (chunked prefill, mixed with decodes in the same step). When the cache has no
block for a running sequence, the sequence of the most-served tenant (newest first) is
preempted: its blocks are freed and it goes back to the front of its tenant's queue, to be
recomputed later. Draft tokens (speculative decoding) get slots only where the budget and
the free blocks allow — they are dropped before anyone is preempted for them — and after
verification the blocks past a sequence's accepted tokens are freed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lmaas.engine.block_manager import BlockManager
from lmaas.engine.fair_share import VirtualTokenCounter
from lmaas.engine.lora.slot_table import SlotTable
from lmaas.engine.sequence import Sequence, SequenceStatus

__all__ = ["ScheduledBatch", "ScheduledSeq", "Scheduler"]


@dataclass(eq=False)
class ScheduledSeq:
    """`num_new_tokens` tokens of `seq` from position `start` go through the model this step."""

    seq: Sequence
    start: int
    num_new_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_new_tokens

    @property
    def samples(self) -> bool:
        """This chunk reaches the last known token, so the step samples a next token."""
        return self.end >= self.seq.num_tokens

    @property
    def num_logits(self) -> int:
        """Positions whose logits the step needs: the last token and each draft token."""
        return 1 + len(self.seq.draft_token_ids) if self.samples else 0


@dataclass
class ScheduledBatch:
    seqs: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.seqs)

    @property
    def is_empty(self) -> bool:
        return not self.seqs


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_batched_tokens: int,
        slots: SlotTable | None = None,
        fairness: VirtualTokenCounter | None = None,
    ) -> None:
        if max_num_seqs < 1 or max_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_batched_tokens must be at least 1")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.slots = slots if slots is not None else SlotTable(0)
        self.fairness = fairness if fairness is not None else VirtualTokenCounter()
        self.waiting: dict[str, deque[Sequence]] = {}
        self.running: list[Sequence] = []
        self._admitted = 0
        self._admit_order: dict[int, int] = {}

    # Queues -----------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.running) or any(self.waiting.values())

    def active_tenant_ids(self) -> set[str]:
        active = {t for t, q in self.waiting.items() if q}
        active.update(s.tenant_id for s in self.running)
        return active

    def add(self, seq: Sequence) -> None:
        if seq.tenant_id not in self.active_tenant_ids():
            self.fairness.activate(seq.tenant_id, self.active_tenant_ids())
        seq.status = SequenceStatus.WAITING
        self.waiting.setdefault(seq.tenant_id, deque()).append(seq)

    def finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        """Stop `seq` (done, aborted or failed) and free what it holds."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq.status is SequenceStatus.WAITING:
            queue = self.waiting.get(seq.tenant_id)
            if queue is not None and seq in queue:
                queue.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.error = error

    # The step ----------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        """Choose the work of the next forward pass."""
        self.slots.begin_step()
        batch = ScheduledBatch()
        budget = self.max_batched_tokens
        scheduled: set[int] = set()
        # Decodes first (their latency is what users feel), then prompt chunks.
        for seq in sorted(self.running, key=lambda s: s.is_prefilling):
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue
            if seq.draft_token_ids:
                self._fit_drafts(seq, budget)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, num_new, scheduled, batch):
                continue
            self.block_manager.allocate(seq, num_new)
            batch.seqs.append(ScheduledSeq(seq, seq.num_computed_tokens, num_new))
            scheduled.add(seq.seq_id)
            budget -= num_new
        if not batch.preempted:
            budget = self._admit(batch, budget)
        return batch

    def advance(self, item: ScheduledSeq, new_token_ids: list[int], num_rejected: int = 0) -> None:
        """Record a finished forward pass for one sequence: computed tokens and sampled ones.

        `num_rejected` draft tokens (speculation) were computed but not accepted.
        """
        seq = item.seq
        seq.num_computed_tokens = item.end - num_rejected
        seq.draft_token_ids = []
        for token_id in new_token_ids:
            seq.append_token(token_id)
        if new_token_ids:
            self.fairness.charge(seq.tenant_id, output_tokens=len(new_token_ids))
        if num_rejected:  # the rejected drafts' slots: blocks past the sequence go back
            self.block_manager.free_tail(seq, seq.num_tokens)
        self.block_manager.commit(seq)

    # Internals ---------------------------------------------------------------------------

    def _fit_drafts(self, seq: Sequence, budget: int) -> None:
        """Drop the drafts that do not fit the step's token budget or the free blocks
        (speculation never preempts anyone)."""
        drafts = seq.draft_token_ids
        room = budget - (seq.num_tokens - seq.num_computed_tokens)
        del drafts[max(room, 0) :]
        while drafts and not self.block_manager.can_allocate(seq, seq.num_uncomputed_tokens):
            drafts.pop()

    def _make_room(
        self, seq: Sequence, num_new: int, scheduled: set[int], batch: ScheduledBatch
    ) -> bool:
        """Preempt until `seq` can get its blocks; False if `seq` itself had to go."""
        while not self.block_manager.can_allocate(seq, num_new):
            candidates = [s for s in self.running if s.seq_id not in scheduled]
            victim = max(
                candidates,
                key=lambda s: (self.fairness.counter(s.tenant_id), self._admit_order[s.seq_id]),
            )
            if victim is seq and len(self.running) == 1:
                # Alone and still out of blocks: the cache cannot hold this sequence.
                self.finish(seq, "length")
                batch.finished.append(seq)
                return False
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.reset_for_recompute()
        self.waiting.setdefault(seq.tenant_id, deque()).appendleft(seq)

    def _release(self, seq: Sequence) -> None:
        self.block_manager.deallocate(seq)
        if seq.adapter_id is not None and seq.lora_slot >= 0:
            self.slots.release(seq.adapter_id)
        seq.lora_slot = -1
        self._admit_order.pop(seq.seq_id, None)

    def _admit(self, batch: ScheduledBatch, budget: int) -> int:
        blocked: set[str] = set()
        while budget > 0 and len(self.running) < self.max_num_seqs:
            tenants = [t for t, q in self.waiting.items() if q and t not in blocked]
            if not tenants:
                break
            tenant = self.fairness.order(tenants)[0]
            seq = self.waiting[tenant][0]
            slot = -1
            if seq.adapter_id is not None:
                acquired = self.slots.acquire(seq.adapter_id)
                if acquired is None:
                    blocked.add(tenant)  # its adapter waits for a slot; others may go
                    continue
                slot = acquired
            if not seq.block_table:
                self.block_manager.match_prefix(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.can_allocate(seq, num_new):
                if seq.adapter_id is not None:
                    self.slots.release(seq.adapter_id)
                self.block_manager.deallocate(seq)
                break
            self.waiting[tenant].popleft()
            self.block_manager.allocate(seq, num_new)
            seq.lora_slot = slot
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self._admitted += 1
            self._admit_order[seq.seq_id] = self._admitted
            if not seq.prompt_charged:
                self.fairness.charge(tenant, input_tokens=seq.num_prompt_tokens)
                seq.prompt_charged = True
            batch.seqs.append(ScheduledSeq(seq, seq.num_computed_tokens, num_new))
            budget -= num_new
        return budget
