"""The paged KV cache's bookkeeping: which blocks are free, who holds which, shared prefixes.

Plain Python (no torch). A block holds the keys and values of `block_size` consecutive
tokens of one sequence. Full blocks are identified by a hash of their tokens chained with
the hash of the blocks before them and a namespace — the tenant (no tenant can learn from
cache timing what another one sent) and the adapter (LoRA changes keys and values) — so a
new sequence whose prompt starts like a cached one of its namespace reuses those blocks
(reference counted) instead of computing them again. A freed block keeps its content and
hash until it is handed out again, so prefixes of finished requests stay reusable.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from lmaas.engine.sequence import Sequence

__all__ = ["Block", "BlockManager"]


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = field(default_factory=tuple)


class BlockManager:
    """Allocates cache blocks to sequences; shares identical full prefix blocks."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of at least one token, got {num_blocks} x {block_size}"
            )
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks, oldest freed first: fresh allocations take the oldest, so recently
        # freed prefixes survive longest.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_to_block: dict[int, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences."""
        return 1.0 - len(self._free) / len(self.blocks)

    @staticmethod
    def block_hash(parent: int | None, namespace: tuple, token_ids: tuple[int, ...]) -> int:
        return hash((parent, namespace, token_ids))

    # Prefix sharing ---------------------------------------------------------------------

    def match_prefix(self, seq: Sequence) -> int:
        """Attach the cached blocks that hold a prefix of `seq`'s prompt; returns their tokens.

        At least the last prompt token is always left to compute (its logits are needed).
        """
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} already holds blocks")
        parent: int | None = None
        num_full = (seq.num_prompt_tokens - 1) // self.block_size
        for index in range(num_full):
            tokens = tuple(seq.block_token_ids(index))
            h = self.block_hash(parent, (seq.tenant_id, seq.adapter_id), tokens)
            block_id = self._hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            parent = h
        seq.num_cached_tokens = len(seq.block_table) * self.block_size
        seq.num_computed_tokens = seq.num_cached_tokens
        return seq.num_cached_tokens

    # Allocation ---------------------------------------------------------------------------

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Fresh blocks `seq` needs to hold `num_new_tokens` more computed tokens."""
        total = seq.blocks_for(seq.num_computed_tokens + num_new_tokens)
        return max(0, total - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give `seq` the blocks for `num_new_tokens` more tokens; raises if none are free."""
        needed = self.num_blocks_needed(seq, num_new_tokens)
        if needed > len(self._free):
            raise ValueError(f"{needed} blocks needed, {len(self._free)} free")
        for _ in range(needed):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None and self._hash_to_block.get(block.hash) == block_id:
                del self._hash_to_block[block.hash]
            block.hash, block.token_ids, block.ref_count = None, (), 1
            seq.block_table.append(block_id)

    def commit(self, seq: Sequence) -> None:
        """Register the now fully computed blocks of `seq` for prefix sharing."""
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        parent: int | None = None
        for index in range(num_full):
            block = self.blocks[seq.block_table[index]]
            if block.hash is None:
                tokens = tuple(seq.block_token_ids(index))
                block.hash = self.block_hash(parent, (seq.tenant_id, seq.adapter_id), tokens)
                block.token_ids = tokens
                self._hash_to_block.setdefault(block.hash, block.block_id)
            parent = block.hash

    def free_tail(self, seq: Sequence, num_tokens: int) -> int:
        """Release the blocks of `seq` past those that hold its first `num_tokens` tokens
        (rejected draft tokens' slots); returns how many were released."""
        keep = seq.blocks_for(num_tokens)
        tail = seq.block_table[keep:]
        for block_id in reversed(tail):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        del seq.block_table[keep:]
        return len(tail)

    def deallocate(self, seq: Sequence) -> None:
        """Release every block of `seq` (kept cached for prefix reuse until handed out)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0
