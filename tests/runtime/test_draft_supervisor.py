"""The runtime's draft supervisor on a real engine (tiny models): a newer draft version is
swapped in while requests run — all of them complete, with exactly the greedy outputs of
plain decoding; OSD records reach the store and rounds are queued; a tenant's own draft
wins on a runtime dedicated to it; the whole loop with a real worker raises acceptance."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from lmaas.config import Settings
from lmaas.engine.async_engine import AsyncEngine
from lmaas.engine.engine_config import EngineConfig
from lmaas.engine.speculation.osd_buffer import list_osd_files, load_osd_records
from lmaas.finetune.draft_builder import build_draft, latest_draft_version, save_draft_version
from lmaas.finetune.draft_locations import DraftLocations
from lmaas.protocol import GenerateRequest, SamplingParams
from lmaas.runtime.state import RuntimeState
from tests.engine.conftest import build_tiny_model

torch.set_num_threads(1)

PROMPTS = [
    "the cat sat on the mat, the cat sat on the mat, the cat",
    "hello world, hello world, hello",
    "one two three four one two three four one two",
    "abc abc abc abc abc",
    "Tell me about the thing and the other thing and the",
]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("target"), "llama-tied")


@pytest.fixture(scope="module")
def hf_target(target_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()


@pytest.fixture
def settings(tmp_path: Path, target_dir: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_url=str(tmp_path / "artifacts"),
        base_model=str(target_dir),
        model_name="tiny",
        dtype="float32",
        device="cpu",
        speculation_max_k=4,
        speculation_proposer="draft",
        draft_poll_s=0,  # the tests poll and flush themselves
        osd_flush_s=3600,
        osd_round_records=1,
        osd_round_period_s=0,
    )


def make_engine(settings: Settings, target_dir: Path) -> AsyncEngine:
    config = EngineConfig.from_settings(settings)
    config.block_size, config.kv_cache_bytes, config.max_batched_tokens = 4, 1 << 21, 64
    return AsyncEngine(config)


def requests(tag: str, policy: str | None, *, tenant: str = "acme", n: int = 5, tokens: int = 60):
    return [
        GenerateRequest(
            request_id=f"{tag}{i}",
            tenant_id=tenant,
            prompt=PROMPTS[i % len(PROMPTS)],
            sampling=SamplingParams(
                max_tokens=tokens, temperature=0, ignore_eos=True, speculation=policy
            ),
        )
        for i in range(n)
    ]


async def run(engine, request: GenerateRequest) -> tuple[list[int], str | None]:
    tokens, reason = [], None
    async for event in engine.generate(request):
        tokens += event.token_ids
        reason = event.finish_reason or reason
    return tokens, reason


def save_shared(settings: Settings, hf_target, layers: list[int]) -> int:
    root = DraftLocations.from_settings(settings).shared_drafts("tiny")
    return save_draft_version(build_draft(hf_target, layers), root)[0]


async def test_a_new_draft_is_swapped_in_while_requests_run(
    settings: Settings, target_dir: Path, hf_target
) -> None:
    save_shared(settings, hf_target, [1])  # v1: the top layer only, often wrong
    state = RuntimeState(settings, make_engine(settings, target_dir))
    await state.start()
    try:
        engine, drafts = state.engine, state.drafts
        assert drafts is not None and drafts.serving is not None and drafts.serving[1] == 1
        plain = await asyncio.gather(*(run(engine, r) for r in requests("p", "off")))
        assert not await drafts.poll()  # nothing newer yet
        # Requests in flight; a better draft (v2: the bottom layer, often right) appears.
        tasks = [asyncio.create_task(run(engine, r)) for r in requests("s", "fixed:3", tokens=120)]
        while engine.stats().get("num_running", 0) < 5:
            await asyncio.sleep(0.005)
        save_shared(settings, hf_target, [0])
        assert await drafts.poll()
        while engine.speculator.num_swaps == 0:
            await asyncio.sleep(0.005)
        in_flight = sum(not t.done() for t in tasks)
        spec = await asyncio.gather(*tasks)
    finally:
        await state.stop()
    assert in_flight == 5, "the swap should have happened with every request running"
    assert [reason for _, reason in spec] == ["length"] * 5
    assert [t[:60] for t, _ in spec] == [t for t, _ in plain]  # greedy: exactly the target's
    assert drafts.serving[1] == 2 and engine.speculator.proposer.backend.draft.version == 2
    scrape = generate_latest(state.metrics.registry).decode()
    assert "lmaas_runtime_draft_version 2.0" in scrape
    assert "lmaas_runtime_draft_swaps_total 1.0" in scrape


async def test_records_are_flushed_and_rounds_queued(
    settings: Settings, target_dir: Path, hf_target
) -> None:
    save_shared(settings, hf_target, [0])
    state = RuntimeState(settings, make_engine(settings, target_dir))
    queued: list[tuple[str, str]] = []
    await state.start()
    assert state.drafts is not None
    state.drafts._send = lambda tenant, model: queued.append((tenant, model))
    osd = DraftLocations.from_settings(settings).osd
    try:
        for tenant in ("acme", "zeta"):
            await asyncio.gather(
                *(run(state.engine, r) for r in requests(tenant, "fixed:3", tenant=tenant, n=2))
            )
        await asyncio.gather(*(run(state.engine, r) for r in requests("o", "off", tenant="off")))
        assert await state.drafts.flush()
        assert sorted(queued) == [("acme", "tiny"), ("zeta", "tiny")]
        records = load_osd_records(list_osd_files(osd, "acme", "tiny"))
        assert len(records) == 2 and all(r.wrong or r.right for r in records)
        assert list_osd_files(osd, "off", "tiny") == []  # no speculation, nothing recorded
        await state.drafts.flush()
        assert len(queued) == 2  # no new records: no new round
        await asyncio.gather(*(run(state.engine, r) for r in requests("z", "fixed:3", n=1)))
    finally:
        await state.stop()  # flushes what the last request recorded
    assert len(load_osd_records(list_osd_files(osd, "acme", "tiny"))) == 3
    scrape = generate_latest(state.metrics.registry).decode()
    assert 'lmaas_runtime_osd_rounds_queued_total{tenant="acme"} 1.0' in scrape
    assert 'lmaas_spec_tenant_acceptance{model="tiny",proposer="draft",tenant="acme"}' in scrape


async def test_a_tenant_runtime_moves_to_the_tenants_own_draft(
    settings: Settings, target_dir: Path, hf_target
) -> None:
    settings = settings.model_copy(update={"draft_tenant": "acme"})
    save_shared(settings, hf_target, [0])
    state = RuntimeState(settings, make_engine(settings, target_dir))
    await state.start()
    try:
        assert state.drafts is not None
        assert not await state.drafts.poll()  # no draft of its own yet: the shared one
        where = DraftLocations.from_settings(settings)
        save_draft_version(build_draft(hf_target, [0, 1]), where.tenant_drafts("acme", "tiny"))
        assert await state.drafts.poll()
        assert state.drafts.serving == (where.tenant_drafts("acme", "tiny"), 1)
        tokens, reason = await run(state.engine, requests("t", "fixed:2", n=1)[0])
        assert reason == "length" and len(tokens) == 60
    finally:
        await state.stop()


async def test_the_first_draft_replaces_prompt_lookup_under_auto(
    settings: Settings, target_dir: Path, hf_target
) -> None:
    settings = settings.model_copy(update={"speculation_proposer": "auto"})
    state = RuntimeState(settings, make_engine(settings, target_dir))  # no draft built yet
    await state.start()
    try:
        assert state.engine.speculator.proposer.kind == "ngram"
        assert state.drafts is not None and state.drafts.serving is None
        assert not await state.drafts.poll()
        save_shared(settings, hf_target, [0])
        assert await state.drafts.poll()
        tokens, reason = await run(state.engine, requests("a", "fixed:2", n=1)[0])
        assert reason == "length" and len(tokens) == 60
        assert state.engine.speculator.proposer.kind == "draft"
    finally:
        await state.stop()


def acceptance(engine) -> tuple[int, int]:
    snap = engine.speculator.stats.snapshot()
    return snap["accepted_tokens"], snap["proposed_tokens"]


async def test_the_whole_loop_with_a_real_worker(
    settings: Settings, target_dir: Path, hf_target
) -> None:
    """Serve → record → flush → queued round → worker distils → runtime swaps the new draft,
    which is accepted more often on the same traffic."""
    from celery.contrib.testing.worker import start_worker

    from lmaas.worker import create_worker_app

    save_shared(settings, hf_target, [1])
    settings = settings.model_copy(update={"draft_tenant": "acme", "osd_round_records": 8})
    state = RuntimeState(settings, make_engine(settings, target_dir))
    await state.start()
    worker_app = create_worker_app(settings.model_copy(update={"osd_steps": 40}))
    tenant_root = DraftLocations.from_settings(settings).tenant_drafts("acme", "tiny")
    try:
        with start_worker(worker_app, perform_ping_check=False, pool="solo", shutdown_timeout=60):
            for rnd in range(3):
                await asyncio.gather(
                    *(run(state.engine, r) for r in requests(f"r{rnd}-", "fixed:3", n=5))
                )
            accepted, proposed = acceptance(state.engine)
            await state.drafts.flush()
            deadline = time.monotonic() + 120
            while (latest_draft_version(tenant_root) or (0,))[0] < 2:
                assert time.monotonic() < deadline, "the worker made no new draft version"
                await asyncio.sleep(0.2)
        assert await state.drafts.poll()
        assert state.drafts.serving == (tenant_root, 2)
        await asyncio.gather(*(run(state.engine, r) for r in requests("after-", "fixed:3", n=5)))
        accepted2, proposed2 = acceptance(state.engine)
    finally:
        await state.stop()
    before = accepted / proposed
    after = (accepted2 - accepted) / (proposed2 - proposed)
    assert after > before + 0.1, (before, after)
