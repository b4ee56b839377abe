"""Building, saving, distilling drafts — on tiny random Llamas (the default model: slow tests)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lmaas.engine.speculation.osd_buffer import OSDRecord, OSDRecorder, list_osd_files
from lmaas.engine.speculation.proposer import DraftModelProposer, HFDraftBackend
from lmaas.finetune.distill import (
    DistillConfig,
    agreement,
    distill,
    measure_acceptance,
    osd_positions,
    speculation_walk,
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
from lmaas.finetune.draft_corpus import teacher_signals
from lmaas.finetune.draft_jobs import run_osd_round
from tests.speculation.reference_loop import plain_decode, speculative_decode, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(3, vocab=96, layers=4, dtype=torch.float32)


@pytest.fixture(scope="module")
def corpus(target):
    """Traffic: 8 prompts served 3 times each, with the target's greedy answers.

    A random tiny target has no structure to generalise from, so "held-out" traffic here
    repeats prompts seen in training — as real traffic repeats its patterns.
    """
    rng = random.Random(0)
    distinct = []
    for _ in range(8):
        prompt = [rng.randint(0, 95) for _ in range(rng.randint(4, 10))]
        distinct.append((prompt, plain_decode(target, prompt, 24)))
    seqs, positions = [], []
    for prompt, answer in distinct * 3:
        seqs.append(prompt + answer)
        positions.append(list(range(len(prompt), len(prompt) + len(answer))))
    return seqs, positions


def test_layer_plans() -> None:
    assert layer_plan(30, 4, "first") == [0, 1, 2, 3]
    assert layer_plan(30, 4, "first_last") == [0, 1, 2, 29]
    assert layer_plan(30, 4, "spread") == [0, 10, 19, 29]
    with pytest.raises(ValueError, match="depth"):
        layer_plan(30, 31)
    with pytest.raises(ValueError, match="strategy"):
        layer_plan(30, 2, "middle")  # type: ignore[arg-type]


@torch.inference_mode()
def test_a_full_depth_draft_is_the_target(target) -> None:
    x = torch.randint(0, 96, (2, 11))
    want = target(input_ids=x).logits
    full = build_draft(target, range(4))
    assert torch.allclose(full(input_ids=x).logits, want, atol=1e-5)
    # A reduced vocabulary keeps the target's logits on its tokens, −inf elsewhere.
    vocab = list(range(0, 96, 3))
    reduced = build_draft(target, range(4), vocab)
    got = reduced(input_ids=x).logits
    assert torch.allclose(got[..., vocab], want[..., vocab], atol=1e-5)
    assert torch.isinf(got[..., 1]).all()


def test_versions_save_load_and_extend(target, tmp_path: Path) -> None:
    root = str(tmp_path / "drafts" / "acme" / "m")
    assert latest_draft_version(root) is None
    draft = build_draft(target, [0, 3], frequent_tokens([[1, 2, 2, 3, 3, 3]], 96, 3, always=[0]))
    assert draft.vocab_ids.tolist() == [0, 2, 3]
    assert save_draft_version(draft, root)[0] == 1
    trained_row = draft.model.lm_head.weight[1].detach().clone() + 1.0
    with torch.no_grad():
        draft.model.lm_head.weight[1] = trained_row
    assert extend_draft_vocab(draft, [5, 2], target.get_output_embeddings().weight) == 1
    assert draft.vocab_ids.tolist() == [0, 2, 3, 5]
    assert torch.equal(draft.model.lm_head.weight[1], trained_row)  # token 2 kept its training
    assert torch.equal(draft.model.lm_head.weight[3], target.get_output_embeddings().weight[5])
    version, url = save_draft_version(draft, root)
    assert (version, url) == (2, f"{root}/v0002")
    assert latest_draft_version(root) == (2, url)
    loaded = load_draft(url)
    x = torch.randint(0, 96, (1, 7))
    with torch.inference_mode():
        assert torch.equal(loaded(input_ids=x).logits, draft(input_ids=x).logits)
    assert loaded.info.source_layers == [0, 3] and loaded.info.version == 2


def test_a_reduced_vocabulary_draft_speculates_exactly(target, corpus) -> None:
    seqs, _ = corpus
    draft = build_draft(target, [0, 3], frequent_tokens(seqs, 96, 48))
    proposer = DraftModelProposer(HFDraftBackend(draft))
    prompt = seqs[0][:6]
    run = speculative_decode(target, proposer, prompt, 20, lambda step: 3)
    assert run.tokens == plain_decode(target, prompt, 20)


def test_distillation_raises_acceptance(target, corpus) -> None:
    seqs, positions = corpus
    train, held = slice(0, 16), slice(16, 24)
    signals = teacher_signals(target, seqs, positions, top_k=16)
    draft = build_draft(target, [0, 3])
    before = measure_acceptance(draft, seqs[held], signals[held])
    result = distill(
        draft, seqs[train], signals[train], DistillConfig(steps=60, lr=2e-3, bf16=False)
    )
    after = measure_acceptance(draft, seqs[held], signals[held])
    assert result.last_loss < result.first_loss
    assert after.greedy > before.greedy + 0.1
    assert after.tokens_per_step[4] > before.tokens_per_step[4]


def test_osd_positions_take_wrong_and_some_right() -> None:
    record = OSDRecord(list(range(50)), 5, wrong=[10, 20], right=list(range(30, 48)))
    (pos,) = osd_positions([record], correct_fraction=0.5, seed=1)
    assert {10, 20} <= set(pos) and len(pos) == 3
    (pos,) = osd_positions([record], correct_fraction=0.0)
    assert pos == [10, 20]
    with pytest.raises(ValueError):
        osd_positions([record], correct_fraction=2)


def test_speculation_walk() -> None:
    assert speculation_walk([True, True, False, True, True, True], 2) == [(0, 2, 2), (3, 2, 2)]
    assert speculation_walk([False, False], 3) == [(0, 2, 0), (1, 1, 0)]


def test_an_osd_round_improves_the_served_draft(target, corpus, tmp_path: Path) -> None:
    seqs, positions = corpus
    draft_root, osd_root = str(tmp_path / "drafts"), str(tmp_path / "osd")
    save_draft_version(build_draft(target, [0, 3], frequent_tokens(seqs[:4], 96, 40)), draft_root)
    served = load_draft(latest_draft_version(draft_root)[1])
    signals = teacher_signals(target, seqs, positions, top_k=16)
    recorder = OSDRecorder(osd_root, "tiny", flush_tokens=400)
    for n, (seq, pos, agree) in enumerate(
        zip(seqs, positions, agreement(served, seqs, signals), strict=True)
    ):
        for offset, proposed, accepted in speculation_walk(agree.tolist(), 4):
            recorder.observe(n, "acme", pos[0] + offset, proposed, accepted)
        recorder.finish(n, seq, pos[0])
    recorder.flush()
    assert list_osd_files(osd_root, "acme", "tiny")
    report = run_osd_round(
        target,
        draft_root,
        osd_root,
        "acme",
        "tiny",
        config=DistillConfig(steps=60, lr=2e-3, bf16=False),
        correct_fraction=0.25,
    )
    assert report["version"] == 2
    assert report["vocab_added"] > 0  # tokens the reduced vocabulary missed
    assert report["after"]["greedy"] > report["before"]["greedy"] + 0.1
    assert list_osd_files(osd_root, "acme", "tiny") == []  # consumed
    # Nothing recorded for another tenant: nothing to do.
    assert "skipped" in run_osd_round(target, draft_root, osd_root, "zeta", "tiny")


def test_the_offline_recipe_picks_distils_and_saves(target, corpus, tmp_path: Path) -> None:
    from lmaas.finetune.draft_corpus import Sample
    from lmaas.finetune.draft_jobs import build_default_draft

    seqs, positions = corpus
    samples = [Sample(s, p[0], "chat") for s, p in zip(seqs, positions, strict=True)]
    report = build_default_draft(
        target,
        tokenizer=object(),
        out_root=str(tmp_path / "drafts"),
        samples={"train": samples[:18], "chat": samples[18:], "grounded": samples[18:]},
        candidates=((1, "first"), (2, "first_last")),
        vocab_size=64,
        config=DistillConfig(steps=40, bf16=False),
    )
    assert [c["layers"] for c in report["candidates"]] == [[0], [0, 3]]
    assert report["layers"] in ([0], [0, 3])
    assert report["after"]["chat"]["greedy"] > 0.5
    assert report["version"] == 1
    saved = load_draft(report["url"])
    assert saved.info.source_layers == report["layers"]
    assert saved.info.draft_vocab_size == 64
