"""The paged KV cache's bookkeeping (no torch): a pool of fixed-size blocks with
reference counts, and a prefix cache of full blocks keyed by a chained hash of their
tokens salted per tenant, evicted least-recently-used.

A block id indexes ``block_size`` consecutive KV slots of the runner's cache tensors;
slot = block_id * block_size + offset. Only full blocks whose tokens are final (never a
speculative draft) enter the prefix cache, so a cached block is immutable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# A cache key: (key of the previous block or the tenant salt, this block's tokens).
BlockKey = tuple[object, tuple[int, ...]]


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens found cached


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_count = [0] * num_blocks
        # Blocks nobody references, oldest release first; cached ones among them are
        # reused last-recently-used first, which evicts their prefix-cache entry.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._key_of: dict[int, BlockKey] = {}
        self._block_of: dict[BlockKey, int] = {}
        self.stats = PrefixCacheStats()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._block_of)

    def usage(self) -> float:
        """Fraction of blocks referenced by a sequence or session (vLLM's KV usage)."""
        return self.num_used / self.num_blocks

    def allocate(self, count: int) -> list[int]:
        """``count`` blocks with refcount 1; raises MemoryError when too few are free."""
        if count > len(self._free):
            raise MemoryError(f"KV pool: need {count} blocks, {len(self._free)} free")
        blocks = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            key = self._key_of.pop(block, None)
            if key is not None:  # evicting a cached prefix block
                del self._block_of[key]
            self.ref_count[block] = 1
            blocks.append(block)
        return blocks

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become free (cached
        ones stay findable until reused)."""
        for block in reversed(blocks):  # tail blocks are evicted before the prefix
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                self._free[block] = None
            elif self.ref_count[block] < 0:
                raise RuntimeError(f"block {block} released twice")

    def match_prefix(self, salt: str, tokens: Sequence[int], max_blocks: int) -> list[int]:
        """Cached full blocks holding a prefix of ``tokens`` (at most ``max_blocks``),
        each referenced once more for the caller."""
        found: list[int] = []
        parent: object = ("salt", salt)
        bs = self.block_size
        for i in range(min(max_blocks, len(tokens) // bs)):
            key = (parent, tuple(tokens[i * bs:(i + 1) * bs]))
            block = self._block_of.get(key)
            if block is None:
                break
            if self.ref_count[block] == 0:
                del self._free[block]
            self.ref_count[block] += 1
            found.append(block)
            parent = key
        self.stats.queries += len(tokens)
        self.stats.hits += len(found) * bs
        return found

    def register_full_blocks(self, salt: str, tokens: Sequence[int], blocks: Sequence[int],
                             already: int) -> int:
        """Enter blocks ``already``.. of a sequence into the prefix cache, for each block
        fully covered by ``tokens`` (final tokens only). Returns the new count of
        registered leading blocks."""
        bs = self.block_size
        full = min(len(tokens) // bs, len(blocks))
        if full <= already:
            return already
        parent: object = ("salt", salt)
        for i in range(full):
            key = (parent, tuple(tokens[i * bs:(i + 1) * bs]))
            if i >= already:
                block = blocks[i]
                if block not in self._key_of and key not in self._block_of:
                    self._key_of[block] = key
                    self._block_of[key] = block
            parent = key
        return full

    def is_cached(self, block: int) -> bool:
        return block in self._key_of
