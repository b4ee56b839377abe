"""The block manager: allocation, reference counts, prefix sharing — plain Python."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmaas.engine.block_manager import BlockManager
from lmaas.engine.sequence import Sequence


def make_seq(
    seq_id: int, tokens: list[int], adapter: str | None = None, bs: int = 4, tenant: str = "t"
) -> Sequence:
    return Sequence(
        seq_id, tokens, max_tokens=8, block_size=bs, adapter_id=adapter, tenant_id=tenant
    )


def test_modules_stay_torch_free() -> None:
    code = (
        "import sys, lmaas.engine.scheduler, lmaas.engine.block_manager, lmaas.engine.sequence;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_allocate_and_free_counts_blocks() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    seq = make_seq(1, list(range(9)))
    assert bm.num_blocks_needed(seq, 9) == 3
    bm.allocate(seq, 9)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 7
    seq.num_computed_tokens = 9
    assert bm.num_blocks_needed(seq, 3) == 0  # 12 tokens fit in 3 blocks
    assert bm.num_blocks_needed(seq, 4) == 1
    bm.deallocate(seq)
    assert bm.num_free_blocks == 10 and seq.block_table == []


def test_allocate_more_than_free_raises() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(1, list(range(12)))
    assert not bm.can_allocate(seq, 12)
    with pytest.raises(ValueError):
        bm.allocate(seq, 12)


def test_identical_prefix_is_shared_and_refcounted() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_seq(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    bm.allocate(first, 10)
    first.num_computed_tokens = 10
    bm.commit(first)
    second = make_seq(2, [1, 2, 3, 4, 5, 6, 7, 8, 42])
    cached = bm.match_prefix(second)
    assert cached == 8 and second.num_computed_tokens == 8
    assert second.block_table == first.block_table[:2]
    assert bm.blocks[first.block_table[0]].ref_count == 2
    bm.allocate(second, 1)
    assert bm.num_free_blocks == 10 - 3 - 1
    bm.deallocate(first)
    assert bm.blocks[second.block_table[0]].ref_count == 1
    bm.deallocate(second)
    assert bm.num_free_blocks == 10


def test_the_last_prompt_token_is_always_computed() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_seq(1, list(range(8)))
    bm.allocate(first, 8)
    first.num_computed_tokens = 8
    bm.commit(first)
    same = make_seq(2, list(range(8)))
    assert bm.match_prefix(same) == 4  # the second block holds the last token: recomputed


def test_prefixes_are_per_adapter_and_per_tenant() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    base = make_seq(1, list(range(9)))
    bm.allocate(base, 9)
    base.num_computed_tokens = 9
    bm.commit(base)
    assert bm.match_prefix(make_seq(2, list(range(9)), adapter="a")) == 0
    assert bm.match_prefix(make_seq(5, list(range(9)), tenant="other")) == 0
    assert bm.match_prefix(make_seq(3, list(range(9)))) == 8


def test_freed_prefix_survives_until_reused() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    first = make_seq(1, list(range(9)))
    bm.allocate(first, 9)
    first.num_computed_tokens = 9
    bm.commit(first)
    bm.deallocate(first)
    again = make_seq(2, list(range(9)))
    assert bm.match_prefix(again) == 8
    bm.deallocate(again)
    # Fill the whole cache with other content: the old prefix is overwritten and forgotten.
    other = make_seq(3, [100 + i for i in range(16)])
    bm.allocate(other, 16)
    other.num_computed_tokens = 16
    bm.commit(other)
    bm.deallocate(other)
    assert bm.match_prefix(make_seq(4, list(range(9)))) == 0
