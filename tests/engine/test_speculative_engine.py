"""Speculative decoding inside the engine: exact greedy outputs, target-distributed samples,
fewer target passes, per-request policies, cache accounting, hot swap, OSD records.

Tiny random models: the target (`llama-tied`, seed 0) and, as drafts on the engine's
paged kernels, a cut of the target (mostly right) and another random model (mostly wrong,
which exercises rejection and KV rollback on nearly every step).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy import stats as scistats

from lmaas.engine.interface import EngineRequestError
from lmaas.engine.speculation.osd_buffer import OSDRecorder, list_osd_files, load_osd_records
from lmaas.engine.speculation.prompt_lookup import PromptLookupProposer
from lmaas.engine.speculation.sampling import sampling_probs
from lmaas.engine.speculator import Speculator, draft_proposer
from lmaas.finetune.draft_builder import build_draft, save_draft_version
from lmaas.protocol import GenerateRequest, SamplingParams
from tests.engine.conftest import build_tiny_model, make_engine

CPU = torch.device("cpu")
PROMPTS = [
    "the cat sat on the mat, the cat sat on the mat, the cat",
    "hello world, hello world, hello",
    "one two three four one two three four one two",
    "abc abc abc abc abc",
    "the the the the the",
    "Tell me about the thing and the other thing and the",
]


@pytest.fixture(scope="module")
def target_dir(tiny_models) -> Path:
    return tiny_models("llama-tied")


@pytest.fixture(scope="module")
def hf_target(target_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_other(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("other"), "llama-tied", seed=1)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def noisy_draft(hf_target):
    """Layer 1 of the target with a noisy output head: right often, not always."""
    draft = build_draft(hf_target, [1])
    with torch.no_grad():
        head = draft.model.lm_head.weight
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    return draft


def make_proposer(kind: str, hf_target, hf_other, engine):
    """`ngram`; drafts: `cut` (layer 0 of the target: nearly always right), `noisy`
    (`noisy_draft`) or `other` (another random model: nearly always wrong)."""
    if kind == "ngram":
        return PromptLookupProposer()
    drafts = {
        "cut": lambda: build_draft(hf_target, [0]),
        "noisy": lambda: noisy_draft(hf_target),
        "other": lambda: build_draft(hf_other, [0]),
    }
    return engine.load_draft_proposer(drafts[kind]())


def speculating_engine(target_dir, kind, hf_target, hf_other, *, policy="smartspec", **kw):
    engine = make_engine(target_dir, CPU, **kw)
    proposer = make_proposer(kind, hf_target, hf_other, engine)
    engine.speculator = Speculator(proposer, max_k=4, policy=policy, model_name="tiny")
    return engine


def tokens_of(events) -> dict[str, list[int]]:
    return {rid: [t for e in evs for t in e.token_ids] for rid, evs in events.items()}


def mixed_requests(adapters: list[str | None]) -> list[GenerateRequest]:
    """Greedy requests of two tenants with various policies and adapters."""
    policies = [None, "fixed:3", "smartspec", "fixed:1", "off", "fixed:4"]
    out = []
    for i, prompt in enumerate(PROMPTS):
        out.append(
            GenerateRequest(
                request_id=f"g{i}",
                tenant_id=f"t{i % 2}",
                adapter_id=adapters[i % len(adapters)],
                prompt=prompt,
                sampling=SamplingParams(
                    max_tokens=24 + 3 * i,
                    temperature=0,
                    ignore_eos=True,
                    speculation=policies[i],
                ),
            )
        )
    return out


def load_adapters(engine, tiny_adapters) -> list[str | None]:
    for name, seed in (("a1", 1), ("a2", 2)):
        engine.add_adapter(engine.read_adapter(name, tiny_adapters("llama-tied", 8, seed)))
    return [None, "a1", "a2"]


@pytest.mark.parametrize("kind", ["ngram", "cut", "noisy", "other"])
@pytest.mark.parametrize("with_lora", [False, True], ids=["base", "lora"])
def test_greedy_outputs_are_exactly_plain_decoding(
    kind, with_lora, target_dir, hf_target, hf_other, tiny_adapters
) -> None:
    # A small token budget mixes verification with other requests' prompt chunks.
    limits = dict(max_batched_tokens=24, max_num_seqs=8)
    plain = make_engine(target_dir, CPU, **limits)
    spec = speculating_engine(target_dir, kind, hf_target, hf_other, **limits)
    adapters = [None]
    if with_lora:
        adapters = load_adapters(plain, tiny_adapters)
        load_adapters(spec, tiny_adapters)
    mixed_steps = 0
    forward = spec.runner.forward

    def counting_forward(items):
        nonlocal mixed_steps
        verifies = any(i.num_logits > 1 for i in items)
        mixed_steps += verifies and any(i.num_new_tokens > i.num_logits for i in items)
        return forward(items)

    spec.runner.forward = counting_forward
    want = tokens_of(plain.generate(mixed_requests(adapters)))
    got = tokens_of(spec.generate(mixed_requests(adapters)))
    assert got == want
    figures = spec.stats()["speculation"]
    assert figures["proposed_tokens"] > 0
    assert mixed_steps > 0  # passes that verified drafts and computed prompt chunks at once
    if kind != "other":
        assert figures["accepted_tokens"] > 0
    # Every cache slot of rejected drafts went back: nothing is held once all requests end.
    assert spec.block_manager.num_free_blocks == spec.block_manager.num_blocks
    backend = getattr(spec.speculator.proposer, "backend", None)
    if backend is not None:
        assert backend.blocks.num_free_blocks == backend.blocks.num_blocks


@pytest.mark.parametrize("kind", ["ngram", "cut"])
def test_accepted_drafts_save_target_passes(kind, target_dir, hf_target, hf_other) -> None:
    plain = make_engine(target_dir, CPU)
    spec = speculating_engine(target_dir, kind, hf_target, hf_other, policy="fixed:3")

    def requests():  # all under the engine's policy (an `off` request would set the pace)
        out = mixed_requests([None])
        for r in out:
            r.sampling.speculation = None
        return out

    want = tokens_of(plain.generate(requests()))
    assert tokens_of(spec.generate(requests())) == want
    figures = spec.stats()["speculation"]
    assert figures["acceptance_rate"] > 0.5
    assert spec.num_forward_passes < 0.7 * plain.num_forward_passes


def test_a_stop_string_inside_accepted_drafts_ends_the_output_there(
    target_dir, hf_target, hf_other
) -> None:
    def request(stop: list[str]) -> GenerateRequest:
        return GenerateRequest(
            request_id="r",
            prompt=PROMPTS[4],
            sampling=SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=stop),
        )

    def run(engine, stop: list[str]) -> tuple[str, str | None]:
        events = engine.generate([request(stop)])["r"]
        return "".join(e.text for e in events), events[-1].finish_reason

    plain = make_engine(target_dir, CPU)
    full, _ = run(plain, [])  # (this prompt's answer has text; some are unprintable ids)
    half = len(full) // 2  # a stop string that first occurs in the second half
    stop = next(
        full[i : i + 2] for i in range(half, len(full)) if full.find(full[i : i + 2]) >= half
    )
    want = run(plain, [stop])
    assert want[1] == "stop" and len(want[0]) < len(full)
    spec = speculating_engine(target_dir, "ngram", hf_target, hf_other, policy="fixed:4")
    assert run(spec, [stop]) == want
    assert spec.stats()["speculation"]["accepted_tokens"] > 0


def test_requests_choose_their_policy(target_dir, hf_target, hf_other) -> None:
    spec = speculating_engine(target_dir, "ngram", hf_target, hf_other, policy="off")
    requests = [
        GenerateRequest(
            request_id=f"r{i}",
            tenant_id=tenant,
            prompt=PROMPTS[0],
            sampling=SamplingParams(
                max_tokens=20, temperature=0, ignore_eos=True, speculation=policy
            ),
        )
        for i, (tenant, policy) in enumerate(
            [("quiet", None), ("quiet", "off"), ("eager", "fixed:2"), ("logprobs", "fixed:2")]
        )
    ]
    requests[3].sampling.logprobs = 2  # logprobs are reported per sampled token: no drafts
    events = spec.generate(requests)
    tenants = spec.stats()["speculation"]["tenant_acceptance"]
    assert set(tenants) == {"eager"}  # the service default is off; only fixed:2 proposed
    assert all(e.logprobs for e in events["r3"] if e.token_ids)
    with pytest.raises(EngineRequestError, match="fixed:K") as info:
        spec.add_request(
            GenerateRequest(
                request_id="bad", prompt="x", sampling=SamplingParams(speculation="fast please")
            )
        )
    assert info.value.param == "sampling.speculation" and info.value.status == 400


def test_seeded_requests_repeat_under_smartspec(target_dir, hf_target, hf_other) -> None:
    """A seed gives the same output whatever the load: under `smartspec` a seeded sampled
    request does not speculate, so it is exactly what plain decoding samples."""

    def requests() -> list[GenerateRequest]:
        return [
            GenerateRequest(
                request_id=f"s{seed}",
                prompt=PROMPTS[seed],
                sampling=SamplingParams(max_tokens=16, temperature=1.0, seed=seed),
            )
            for seed in range(3)
        ] + mixed_requests([None])[:3]  # greedy neighbours that do speculate

    want = tokens_of(make_engine(target_dir, CPU).generate(requests()))
    spec = speculating_engine(target_dir, "ngram", hf_target, hf_other)
    assert tokens_of(spec.generate(requests())) == want
    assert spec.stats()["speculation"]["proposed_tokens"] > 0


def test_a_small_draft_cache_limits_speculation_not_requests(target_dir, hf_target) -> None:
    engine = make_engine(target_dir, CPU)
    proposer = draft_proposer(
        build_draft(hf_target, [0]),
        vocab_size=engine.runner.model_config.vocab_size,
        num_tokens=40,  # room for about two sequences' drafts
        block_size=4,
        dtype=torch.float32,
        device=CPU,
    )
    engine.speculator = Speculator(proposer, max_k=3, policy="fixed:3")
    roomy = make_engine(target_dir, CPU)
    roomy.speculator = Speculator(
        roomy.load_draft_proposer(build_draft(hf_target, [0])), max_k=3, policy="fixed:3"
    )
    want = tokens_of(make_engine(target_dir, CPU).generate(mixed_requests([None])))
    assert tokens_of(engine.generate(mixed_requests([None]))) == want
    assert tokens_of(roomy.generate(mixed_requests([None]))) == want
    small, large = (e.stats()["speculation"]["proposed_tokens"] for e in (engine, roomy))
    assert 0 < small < large  # the requests that fitted speculated, the others waited
    assert proposer.backend.blocks.num_free_blocks == proposer.backend.blocks.num_blocks


def test_drafts_never_preempt_and_fit_a_tight_cache(target_dir, hf_target, hf_other) -> None:
    from tests.engine.conftest import cache_bytes

    # 16 blocks of 4 tokens for 4 requests of ~20-token prompts + 12 new tokens each.
    kw = dict(kv_cache_bytes=cache_bytes(target_dir, 40), max_num_seqs=4)
    plain = make_engine(target_dir, CPU, **kw)
    spec = speculating_engine(target_dir, "ngram", hf_target, hf_other, policy="fixed:4", **kw)
    requests = mixed_requests([None])[:4]
    want = tokens_of(plain.generate(requests))
    assert tokens_of(spec.generate(mixed_requests([None])[:4])) == want
    assert spec.num_preemptions <= plain.num_preemptions
    assert spec.block_manager.num_free_blocks == spec.block_manager.num_blocks


def test_draft_hot_swap_between_steps_keeps_requests_exact(target_dir, hf_target, hf_other) -> None:
    plain = make_engine(target_dir, CPU)
    want = tokens_of(plain.generate(mixed_requests([None])))
    spec = speculating_engine(target_dir, "other", hf_target, hf_other, policy="fixed:3")
    events: dict[str, list] = {r.request_id: [] for r in mixed_requests([None])}
    for request in mixed_requests([None]):
        spec.add_request(request)
    for _ in range(4):
        for rid, event in spec.step():
            events[rid].append(event)
    accepted_before = spec.stats()["speculation"]["accepted_tokens"]
    old = spec.speculator.proposer
    better = spec.load_draft_proposer(build_draft(hf_target, [0]))
    assert better.backend.kv_cache is old.backend.kv_cache  # one draft cache, reused
    spec.set_proposer(better)
    while spec.has_unfinished_requests():
        for rid, event in spec.step():
            events[rid].append(event)
    assert tokens_of(events) == want
    assert spec.speculator.num_swaps == 1
    assert spec.stats()["speculation"]["accepted_tokens"] > accepted_before + 20


def test_osd_records_where_the_draft_was_right_and_wrong(
    target_dir, hf_target, hf_other, tmp_path
) -> None:
    """Greedy requests under a mediocre draft (`noisy_draft`): every recorded
    position holds the target's token, and the draft's own greedy guess from the tokens
    before it equals that token exactly at the `right` positions, never at `wrong` ones."""
    engine = make_engine(target_dir, CPU)
    draft = noisy_draft(hf_target)
    proposer = engine.load_draft_proposer(draft)
    engine.speculator = Speculator(proposer, max_k=4, policy="fixed:3", model_name="tiny")
    engine.speculator.osd = OSDRecorder(str(tmp_path), "tiny")
    out = tokens_of(engine.generate(mixed_requests([None])))
    engine.speculator.osd.flush()
    records = [
        r
        for tenant in ("t0", "t1")
        for r in load_osd_records(list_osd_files(str(tmp_path), tenant, "tiny"))
    ]
    figures = engine.stats()["speculation"]
    assert sum(len(r.right) for r in records) == figures["accepted_tokens"] > 0
    assert sum(len(r.wrong) for r in records) > 0
    outputs = {tuple(tokens) for tokens in out.values()}
    for record in records:
        assert tuple(record.token_ids[record.prompt_len :]) in outputs
        with torch.no_grad():
            guesses = draft(input_ids=torch.tensor([record.token_ids])).logits[0].argmax(-1)
        for p in record.right:
            assert record.prompt_len < p and guesses[p - 1] == record.token_ids[p]
        for p in record.wrong:
            assert record.prompt_len < p and guesses[p - 1] != record.token_ids[p]


# Sampling: outputs follow the target distribution ---------------------------------------


def exact_joint(hf_target, prompt_ids: list[int], top_k: int, length: int) -> dict[tuple, float]:
    """P(first `length` tokens) under temperature 1 and `top_k`, by enumeration."""
    out: dict[tuple, float] = {}

    def walk(prefix: tuple, mass: float) -> None:
        if len(prefix) == length:
            out[prefix] = mass
            return
        with torch.no_grad():
            logits = hf_target(torch.tensor([prompt_ids + list(prefix)])).logits[0, -1]
        p = sampling_probs(logits, 1.0, top_k, 1.0)
        for token in torch.nonzero(p).flatten().tolist():
            walk((*prefix, token), mass * float(p[token]))

    walk((), 1.0)
    return out


def chi_square_pvalue(engine, hf_target, prompt: str, n: int) -> float:
    """Sample four tokens (temperature 1, top-k 2) for `n` requests and test the first
    three (8 outcomes) against the target's exact probabilities. Token 1 comes from the
    prefill; under `fixed:2` tokens 2 and 3 are verified proposals (accepted, or replaced
    by a draw from the residual) and what follows the bonus or that draw."""
    prompt_ids = engine.tokenizer.encode(prompt)
    want = exact_joint(hf_target, prompt_ids, top_k=2, length=3)
    torch.manual_seed(1234)
    requests = [
        GenerateRequest(
            request_id=f"s{i}",
            prompt_token_ids=prompt_ids,
            sampling=SamplingParams(max_tokens=4, temperature=1.0, top_k=2, ignore_eos=True),
        )
        for i in range(n)
    ]
    counts: dict[tuple, int] = {}
    for tokens in tokens_of(engine.generate(requests)).values():
        counts[tuple(tokens[:3])] = counts.get(tuple(tokens[:3]), 0) + 1
    assert set(counts) <= set(want), "a sequence the target cannot produce under top-k 2"
    outcomes = sorted(want)
    total = sum(want.values())
    observed = [counts.get(o, 0) for o in outcomes]
    expected = [want[o] / total * n for o in outcomes]
    return float(scistats.chisquare(observed, expected).pvalue)


def sampling_engine(kind, target_dir, hf_target, hf_other):
    return speculating_engine(
        target_dir,
        kind,
        hf_target,
        hf_other,
        policy="fixed:2",
        max_num_seqs=64,
        max_batched_tokens=1024,
    )


@pytest.mark.parametrize(("kind", "prompt"), [("other", PROMPTS[5]), ("ngram", PROMPTS[1])])
def test_sampled_outputs_follow_the_target_distribution(
    kind, prompt, target_dir, hf_target, hf_other
) -> None:
    """Speculating sampled requests are distributed as plain decoding (`chi_square_pvalue`)."""
    engine = sampling_engine(kind, target_dir, hf_target, hf_other)
    n = 1000
    pvalue = chi_square_pvalue(engine, hf_target, prompt, n)
    figures = engine.stats()["speculation"]
    assert figures["proposed_tokens"] >= n // 4  # speculation did run
    assert 0 < figures["accepted_tokens"] < figures["proposed_tokens"]  # both paths ran
    assert len(figures["position_acceptance"]) == 2  # second proposals were verified too
    assert pvalue > 1e-3


def test_the_distribution_test_catches_a_biased_verifier(
    target_dir, hf_target, hf_other, monkeypatch
) -> None:
    """The same test fails when a rejection draws from p instead of the residual
    norm(max(0, p − q)) — the classic bug."""
    import lmaas.engine.speculator as speculator_module
    from lmaas.engine.speculation.sampling import sample_from

    real = speculator_module.verify

    def biased(logits, draft_tokens, num_proposed, **kw):
        out = real(logits, draft_tokens, num_proposed, **kw)
        p = kw["target_probs"]
        for b in range(out.num_accepted.shape[0]):
            j = int(out.num_accepted[b])
            if j < int(num_proposed[b]):
                out.token_ids[b, j] = sample_from(p[b, j][None])[0]
        return out

    monkeypatch.setattr(speculator_module, "verify", biased)
    engine = sampling_engine("other", target_dir, hf_target, hf_other)
    assert chi_square_pvalue(engine, hf_target, PROMPTS[5], 1000) < 1e-3


def test_the_engine_finds_its_proposer_from_the_settings(
    target_dir, hf_target, hf_other, tmp_path
) -> None:
    root = str(tmp_path / "drafts")
    spec = dict(speculation_max_k=3, draft_url=root)
    assert make_engine(target_dir, CPU).speculator is None  # max_k 0: no speculation
    auto = make_engine(target_dir, CPU, speculation_proposer="auto", **spec)
    assert auto.speculator.proposer.kind == "ngram"  # no draft yet: prompt lookup
    with pytest.raises(ValueError, match="no draft model"):
        make_engine(target_dir, CPU, speculation_proposer="draft", **spec)

    Path(root).mkdir(parents=True)
    (Path(root) / "LATEST").write_text("v0009")  # names a version that is not there
    broken = make_engine(target_dir, CPU, speculation_proposer="auto", **spec)
    assert broken.speculator.proposer.kind == "ngram"  # logged, and prompt lookup serves
    with pytest.raises(FileNotFoundError):
        make_engine(target_dir, CPU, speculation_proposer="draft", **spec)

    version, _ = save_draft_version(build_draft(hf_target, [0]), root)
    engine = make_engine(target_dir, CPU, speculation_proposer="auto", **spec)
    assert engine.speculator.proposer.kind == "draft"
    assert engine.speculator.proposer.backend.draft.version == version
    plain = make_engine(target_dir, CPU)
    want = tokens_of(plain.generate(mixed_requests([None])))
    assert tokens_of(engine.generate(mixed_requests([None]))) == want
    assert engine.stats()["speculation"]["accepted_tokens"] > 0

    with pytest.raises(ValueError, match="share the target's tokenizer"):
        draft_proposer(
            build_draft(hf_other, [0]),
            vocab_size=engine.runner.model_config.vocab_size + 1,  # another target
            num_tokens=64,
            block_size=4,
            dtype=torch.float32,
            device=CPU,
        )


def test_the_async_engine_swaps_in_draft_versions(target_dir, hf_target, hf_other, tmp_path):
    """`auto` starts on prompt lookup (no draft yet), then takes a first draft and a better
    second version, each between two steps, with the same outputs throughout."""
    import asyncio

    from lmaas.engine.async_engine import AsyncEngine
    from lmaas.engine.engine_config import EngineConfig

    root = str(tmp_path / "drafts")
    config = EngineConfig(
        model_path=target_dir,
        block_size=4,
        kv_cache_bytes=1 << 20,
        speculation="fixed:3",
        speculation_max_k=3,
        speculation_proposer="auto",
        draft_url=root,
    )
    plain = make_engine(target_dir, CPU)
    want = tokens_of(plain.generate(mixed_requests([None])[:2]))

    async def main() -> tuple[list, list, dict]:
        engine = AsyncEngine(config)
        await engine.start()
        try:

            async def run(request: GenerateRequest) -> list[int]:
                return [t async for e in engine.generate(request) for t in e.token_ids]

            outputs, kinds = [], []
            for draft in (None, build_draft(hf_other, [0]), build_draft(hf_target, [0])):
                if draft is not None:
                    version, url = save_draft_version(draft, root)
                    assert await engine.swap_draft(url) == version
                outputs.append(await asyncio.gather(*map(run, mixed_requests([None])[:2])))
                kinds.append(engine.stats()["speculation"]["proposer"])
            return outputs, kinds, engine.stats()["speculation"]
        finally:
            await engine.shutdown()

    outputs, kinds, figures = asyncio.run(main())
    assert outputs == [[want["g0"], want["g1"]]] * 3
    assert kinds == ["ngram", "draft", "draft"]
    assert figures["draft_version"] == 2 and figures["swaps"] == 2


def test_the_paged_draft_computes_what_the_draft_model_does(hf_target) -> None:
    """Batched paged passes (catch-up prefills and single tokens of several sequences in
    one pass, rollbacks) give the logits of the transformers draft run one by one — for a
    draft with a frequency-reduced output vocabulary too."""
    from lmaas.engine.speculation.paged_draft import PagedDraftBackend, load_paged_draft
    from lmaas.engine.speculation.proposer import HFDraftBackend

    vocab = list(range(0, 200, 2))
    draft = build_draft(hf_target, [1], vocab)
    paged = PagedDraftBackend(
        load_paged_draft(draft, dtype=torch.float32, device=CPU), num_tokens=256, block_size=4
    )
    reference = HFDraftBackend(draft)
    rng = torch.Generator().manual_seed(0)
    seqs = {"a": 11, "b": 3, "c": 6}
    feeds = [
        (list(seqs), [torch.randint(0, 200, (n,), generator=rng).tolist() for n in seqs.values()]),
        (["a", "c"], [[5], [7]]),
        (["b", "a", "c"], [[9, 4, 2, 8, 1], [3], [6]]),
    ]
    for ids, tokens in feeds:
        want = reference.forward(ids, tokens)
        got = paged.forward(ids, tokens)
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got))
        assert torch.allclose(got[finite], want[finite], atol=1e-4)
    for backend in (paged, reference):  # roll "a" back by two tokens, continue
        backend.truncate("a", 11)
    assert torch.allclose(
        paged.forward(["a"], [[1, 2]]).nan_to_num(neginf=0),
        reference.forward(["a"], [[1, 2]]).nan_to_num(neginf=0),
        atol=1e-4,
    )
    for seq_id in seqs:
        paged.release(seq_id)
    assert paged.blocks.num_free_blocks == paged.blocks.num_blocks
