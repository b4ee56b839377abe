"""Mixed-adapter batches against transformers + peft, on tiny random models.

Adapters of ranks 4, 8 and 16 on every attention and MLP projection, mixed with base-model
requests in the same batches, prompts of different lengths, a KV cache small enough to
force preemption, and fewer device slots than adapters (slots are swapped under load).
Every generated token is checked: same greedy token as peft, and the engine's reported
log-probabilities (its fp32 logits) within 1e-4 of peft's.
"""

from __future__ import annotations

import pytest
import torch

from lmaas.protocol import GenerateRequest, SamplingParams
from tests.engine.conftest import cache_bytes, load_peft_reference, make_engine, reference_logits

TOLERANCE = 1e-4
PLAN = [None, "a4", "a8", "a16", "a4", None, "a16", "a8"]


def _requests(vocab: int) -> list[GenerateRequest]:
    gen = torch.Generator().manual_seed(7)
    requests = []
    for i, adapter in enumerate(PLAN):
        prompt = torch.randint(0, vocab - 7, (3 + 4 * i,), generator=gen).tolist()
        requests.append(
            GenerateRequest(
                request_id=f"r{i}",
                adapter_id=adapter,
                prompt_token_ids=prompt,
                sampling=SamplingParams(max_tokens=7, temperature=0, logprobs=3, ignore_eos=True),
            )
        )
    return requests


@pytest.mark.parametrize(("layout", "slots"), [("llama-tied", 3), ("qwen2", 2), ("mistral", 3)])
def test_mixed_adapter_batch_matches_peft(
    tiny_models, tiny_adapters, layout, slots, device
) -> None:
    folder = tiny_models(layout)
    adapters = {f"a{r}": tiny_adapters(layout, r, r) for r in (4, 8, 16)}
    engine = make_engine(
        folder,
        device,
        lora_slots=slots,
        kv_cache_bytes=cache_bytes(folder, 24),
        max_batched_tokens=32,
    )
    for name, path in adapters.items():
        engine.add_adapter(engine.read_adapter(name, path))
    reference = load_peft_reference(folder, adapters, device)
    requests = _requests(engine.runner.model_config.vocab_size)
    results = engine.generate(requests)
    assert engine.num_preemptions > 0, "the cache was sized to force preemption"
    for request in requests:
        events = results[request.request_id]
        assert events[-1].finish_reason == "length"
        tokens = [t for e in events for t in e.token_ids]
        logprobs = [lp for e in events for lp in (e.logprobs or [])]
        assert len(tokens) == len(logprobs) == 7
        seq = list(request.prompt_token_ids or [])
        for token, entry in zip(tokens, logprobs, strict=True):
            ref = torch.log_softmax(
                reference_logits(reference, seq, request.adapter_id, device), -1
            )
            assert token == int(ref.argmax()), f"{request.request_id} diverged at {len(seq)}"
            assert abs(entry.logprob - ref[token].item()) < TOLERANCE
            top = sorted(entry.top_logprobs.values(), reverse=True)
            torch.testing.assert_close(
                torch.tensor(top), ref.topk(3).values.cpu(), atol=TOLERANCE, rtol=0
            )
            seq.append(token)


def test_adapter_changes_the_output(tiny_models, tiny_adapters, device) -> None:
    """A sanity check on the oracle: the adapters are not no-ops."""
    folder = tiny_models("llama-tied")
    reference = load_peft_reference(folder, {"a8": tiny_adapters("llama-tied", 8, 8)}, device)
    ids = [5, 6, 7, 8]
    base = reference_logits(reference, ids, None, device)
    tuned = reference_logits(reference, ids, "a8", device)
    assert (base - tuned).abs().max() > 0.05
