"""Packing examples into rows: targets, positions, no attention across examples; data order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmaas.finetune.batching import IGNORE_INDEX, EpochPlan, pack_examples
from lmaas.finetune.data import TokenizedExample


def example(ids: list[int], loss_from: int) -> TokenizedExample:
    return TokenizedExample(tuple(ids), tuple(i >= loss_from for i in range(len(ids))))


def test_packing_fills_rows_and_shifts_targets() -> None:
    a = example([10, 11, 12, 13, 14, 15], loss_from=3)
    b = example([20, 21, 22], loss_from=1)
    c = example([30, 31, 32, 33], loss_from=2)
    batch = pack_examples([a, b, c], max_len=10)
    # first fit, longest first: a+c fill row 0 (10 tokens), b goes to row 1 (padded)
    assert batch.input_ids.shape == (2, 10)
    assert batch.num_tokens == 13
    assert batch.input_ids[0].tolist() == [10, 11, 12, 13, 14, 15, 30, 31, 32, 33]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    # position t predicts token t+1 of the same example, where the loss looks
    assert batch.targets[0].tolist() == [-100, -100, 13, 14, 15, -100, -100, 32, 33, -100]
    assert batch.input_ids[1, :3].tolist() == [20, 21, 22]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
    assert batch.targets[1, :3].tolist() == [21, 22, -100]
    assert (batch.targets[1, 3:] == IGNORE_INDEX).all()
    assert batch.num_loss_tokens == 3 + 2 + 2


def test_packed_rows_compute_exactly_what_separate_examples_do(tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    exs = [example(torch.randint(3, 1000, (n,), generator=g).tolist(), 0) for n in (7, 5, 11, 3)]
    batch = pack_examples(exs, max_len=16)
    assert batch.input_ids.shape[0] < len(exs)  # something was packed
    with torch.no_grad():
        # without a KV cache, restarting position ids make transformers mask per example
        packed = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits
        for ex in exs:
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            seq = torch.tensor(ex.input_ids)
            found = False
            for r in range(batch.input_ids.shape[0]):
                row = batch.input_ids[r]
                for start in range(row.numel() - seq.numel() + 1):
                    if (
                        torch.equal(row[start : start + seq.numel()], seq)
                        and int(batch.position_ids[r, start]) == 0
                    ):
                        got = packed[r, start : start + seq.numel()]
                        torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)
                        found = True
            assert found


def test_epoch_plan_is_deterministic_and_covers_every_example_each_epoch() -> None:
    plan = EpochPlan(num_examples=10, batch_size=3, n_epochs=2, seed=5)
    assert plan.steps_per_epoch == 4 and plan.total_steps == 8
    epoch0 = [i for s in range(4) for i in plan.indices(s)]
    epoch1 = [i for s in range(4, 8) for i in plan.indices(s)]
    assert sorted(epoch0) == list(range(10)) == sorted(epoch1)
    assert epoch0 != epoch1
    again = EpochPlan(num_examples=10, batch_size=3, n_epochs=2, seed=5)
    assert [again.indices(s) for s in range(8)] == [plan.indices(s) for s in range(8)]
    other = EpochPlan(num_examples=10, batch_size=3, n_epochs=2, seed=6)
    assert [other.indices(s) for s in range(4)] != [plan.indices(s) for s in range(4)]
    with pytest.raises(IndexError):
        plan.indices(8)
