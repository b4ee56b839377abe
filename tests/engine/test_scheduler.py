"""The scheduler: chunked prefill, mixed steps, preemption, adapter slots, VTC fairness.

A fake model loop drives it: every sampled token is 7, so the tests look at scheduling only.
"""

from __future__ import annotations

from lmaas.engine.block_manager import BlockManager
from lmaas.engine.fair_share import VirtualTokenCounter
from lmaas.engine.lora.slot_table import SlotTable
from lmaas.engine.scheduler import ScheduledBatch, Scheduler
from lmaas.engine.sequence import Sequence, SequenceStatus

BS = 4


def make_scheduler(
    num_blocks: int = 64, max_num_seqs: int = 8, budget: int = 32, slots: int = 0
) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, BS),
        max_num_seqs=max_num_seqs,
        max_batched_tokens=budget,
        slots=SlotTable(slots, max_loads_per_step=2),
        fairness=VirtualTokenCounter(),
    )


_ids = iter(range(1, 1_000_000))


def make_seq(
    prompt_len: int, max_tokens: int = 4, tenant: str = "t", adapter: str | None = None
) -> Sequence:
    seq_id = next(_ids)
    prompt = [seq_id * 1000 + i for i in range(prompt_len)]  # no accidental prefix sharing
    return Sequence(
        seq_id, prompt, max_tokens=max_tokens, block_size=BS, tenant_id=tenant, adapter_id=adapter
    )


def run_step(s: Scheduler) -> ScheduledBatch:
    """Schedule, pretend to run the model, finish sequences at max_tokens."""
    batch = s.schedule()
    for item in batch.seqs:
        s.advance(item, [7] if item.samples else [])
        if item.seq.num_output_tokens >= item.seq.max_tokens:
            s.finish(item.seq, "length")
    return batch


def test_long_prompt_is_chunked_and_mixed_with_decodes() -> None:
    s = make_scheduler(budget=16)
    short = make_seq(3, max_tokens=10)
    s.add(short)
    run_step(s)  # short prefilled
    long = make_seq(40)
    s.add(long)
    batch = run_step(s)
    kinds = {item.seq.seq_id: item.num_new_tokens for item in batch.seqs}
    assert kinds == {short.seq_id: 1, long.seq_id: 15}, "decode first, prompt chunk fills the rest"
    assert batch.num_tokens == 16
    steps = 1
    while long.is_prefilling:
        batch = run_step(s)
        steps += 1
        assert batch.num_tokens <= 16
    assert steps == 3 and long.num_output_tokens == 1


def test_max_num_seqs_limits_the_running_batch() -> None:
    s = make_scheduler(max_num_seqs=2)
    seqs = [make_seq(2) for _ in range(4)]
    for seq in seqs:
        s.add(seq)
    run_step(s)
    assert s.num_running == 2 and s.num_waiting == 2


def test_out_of_blocks_preempts_and_recomputes() -> None:
    s = make_scheduler(num_blocks=6, budget=64)
    a, b = make_seq(8, max_tokens=12), make_seq(8, max_tokens=12)
    s.add(a)
    s.add(b)
    run_step(s)  # 2 blocks each, 2 free
    preempted = []
    for _ in range(30):
        batch = run_step(s)
        preempted += batch.preempted
        if not s.has_work():
            break
    assert preempted, "the cache cannot hold both to the end: one must be preempted"
    assert a.is_finished and b.is_finished
    assert a.num_output_tokens == 12 and b.num_output_tokens == 12
    assert s.block_manager.num_free_blocks == 6
    assert any(seq.num_preemptions for seq in (a, b))


def test_sequence_alone_that_outgrows_the_cache_stops_with_length() -> None:
    s = make_scheduler(num_blocks=2, budget=64)
    seq = make_seq(6, max_tokens=100)
    s.add(seq)
    batch = None
    for _ in range(10):
        batch = run_step(s)
        if seq.is_finished:
            break
    assert seq.is_finished and seq.finish_reason == "length"
    assert batch is not None and seq in batch.finished
    assert seq.num_tokens == 9  # 8 tokens in the cache (2 blocks of 4) + the last sampled one


def test_adapter_slots_limit_distinct_adapters_in_a_batch() -> None:
    s = make_scheduler(slots=2)
    seqs = [make_seq(2, adapter=name) for name in ("a", "b", "c")]
    for seq in seqs:
        s.add(seq)
    batch = run_step(s)
    assert {item.seq.adapter_id for item in batch.seqs} == {"a", "b"}
    loads = s.slots.take_pending_loads()
    assert sorted(a for _, a in loads) == ["a", "b"]
    assert seqs[2].status is SequenceStatus.WAITING
    while not seqs[0].is_finished or not seqs[1].is_finished:
        run_step(s)
    batch = run_step(s)
    assert [item.seq.adapter_id for item in batch.seqs] == ["c"]
    assert s.slots.take_pending_loads()[0][1] == "c"


def test_same_adapter_shares_one_slot() -> None:
    s = make_scheduler(slots=1)
    seqs = [make_seq(2, adapter="a") for _ in range(3)]
    for seq in seqs:
        s.add(seq)
    batch = run_step(s)
    assert len(batch.seqs) == 3 and {seq.lora_slot for seq in seqs} == {0}
    assert len(s.slots.take_pending_loads()) == 1


def test_flooding_tenant_does_not_starve_a_light_one() -> None:
    s = make_scheduler(max_num_seqs=2, budget=64)
    flood = [make_seq(8, max_tokens=4, tenant="flood") for _ in range(20)]
    for seq in flood:
        s.add(seq)
    for _ in range(3):
        run_step(s)
    light = [make_seq(8, max_tokens=4, tenant="light") for _ in range(2)]
    for seq in light:
        s.add(seq)
    steps = 0
    while not all(seq.is_finished for seq in light):
        run_step(s)
        steps += 1
    finished_flood = sum(seq.is_finished for seq in flood)
    # FCFS would finish all 20 flood requests first; fair sharing interleaves.
    assert finished_flood <= 6, f"light tenant waited behind {finished_flood} flood requests"
    assert steps <= 15


def test_idle_tenant_is_lifted_to_the_active_minimum() -> None:
    vtc = VirtualTokenCounter(input_weight=1, output_weight=2)
    vtc.charge("busy", input_tokens=100)
    vtc.activate("new", ["busy"])
    assert vtc.counter("new") == 100
    vtc.charge("new", output_tokens=5)
    assert vtc.counter("new") == 110
    assert vtc.order(["busy", "new"]) == ["busy", "new"]


def test_finish_frees_a_waiting_or_running_sequence() -> None:
    s = make_scheduler(max_num_seqs=1)
    running, waiting = make_seq(5), make_seq(5)
    s.add(running)
    s.add(waiting)
    run_step(s)
    s.finish(waiting, "cancelled")
    s.finish(running, "cancelled")
    assert not s.has_work()
    assert s.block_manager.num_free_blocks == 64


def test_draft_tokens_are_scheduled_with_the_decode() -> None:
    s = make_scheduler()
    seq = make_seq(4, max_tokens=10)
    s.add(seq)
    run_step(s)
    seq.draft_token_ids = [1, 2, 3]
    batch = s.schedule()
    (item,) = batch.seqs
    assert item.num_new_tokens == 4 and item.num_logits == 4 and item.start == 4
    s.advance(item, [1, 2, 9], num_rejected=1)  # two drafts accepted, then a correction
    assert seq.num_computed_tokens == 7 and seq.output_token_ids == [7, 1, 2, 9]
