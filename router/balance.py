"""Which replica of a tier a new request goes to: prefix-aware, with bounded load.

A replica's prefix cache (cloud) or slots (edge) hold KV per tenant, so a request is
cheapest where its prompt's leading tokens were seen before. Two signals, both keyed by
chained hashes of the prompt's whole 16-token blocks (the tenant salts the chain, as the
caches are per tenant):

- **the prefix table** (in spirit SGLang's cache-aware router and vLLM production-stack's
  prefix routing): the replica each recently routed block chain went to; a request goes
  where its longest remembered chain went (a chat's next turn extends its last prompt);
- **a consistent-hash ring** over the first ``RING_KEY_BLOCKS`` blocks (64 tokens) for
  prefixes this router has not seen: every router replica maps a shared system prompt to
  the same replica without talking to the others, and a replica joining or leaving moves
  only its own share of keys.

Either choice is bounded (consistent hashing with bounded loads, Mirrokni et al. 2018):
a replica already holding more than ``(1 + epsilon)`` times its fair share of the
router's in-flight requests is passed over for the next one along the ring, so one hot
prefix cannot pin a replica while the others idle.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

BLOCK_TOKENS = 16
RING_KEY_BLOCKS = 4  # the ring's key: the first 64 tokens
MAX_BLOCKS = 256  # the prefix table looks at most this far into a prompt (4,096 tokens)
VIRTUAL_NODES = 64  # ring points per replica: shares within a few % of 1/n
DEFAULT_EPSILON = 0.25
TABLE_ENTRIES = 65_536  # remembered block chains (LRU), across tenants


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def block_hashes(tenant: str, tokens: Sequence[int], limit: int = MAX_BLOCKS) -> list[int]:
    """Hash ``i`` covers the tenant and ``tokens[:16 * (i + 1)]``; a prompt shorter than
    one block gets one hash of all its tokens (its key must still depend on them)."""
    chain = hashlib.blake2b(tenant.encode() + b"\0", digest_size=8)
    whole = min(len(tokens) // BLOCK_TOKENS, limit)
    if whole == 0:
        chain.update(array("i", tokens).tobytes())
        return [int.from_bytes(chain.digest(), "big")]
    out = []
    for i in range(whole):
        chain.update(array("i", tokens[i * BLOCK_TOKENS:(i + 1) * BLOCK_TOKENS]).tobytes())
        out.append(int.from_bytes(chain.copy().digest(), "big"))
    return out


class HashRing:
    """``VIRTUAL_NODES`` points per member on a 64-bit ring."""

    def __init__(self, members: Sequence[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        points = sorted((_digest(f"{member}#{i}".encode()), member)
                        for member in members for i in range(virtual_nodes))
        self._keys = [key for key, _ in points]
        self._members = [member for _, member in points]
        self.size = len(set(members))

    def walk(self, key: int) -> Iterator[str]:
        """Every member once, clockwise from ``key``."""
        start = bisect.bisect(self._keys, key)
        seen: set[str] = set()
        for j in range(len(self._members)):
            member = self._members[(start + j) % len(self._members)]
            if member not in seen:
                seen.add(member)
                yield member
                if len(seen) == self.size:
                    return


class PrefixBalancer:
    """Chooses among replicas by prompt prefix, bounded by in-flight load."""

    def __init__(self, epsilon: float = DEFAULT_EPSILON, table_entries: int = TABLE_ENTRIES) -> None:
        if epsilon <= 0:
            raise ValueError("epsilon must be > 0")
        self.epsilon = epsilon
        self._table: OrderedDict[int, str] = OrderedDict()
        self._table_entries = table_entries
        self._ring: HashRing | None = None
        self._ring_members: tuple[str, ...] = ()

    def ring(self, members: Sequence[str]) -> HashRing:
        """The ring over every known replica (healthy or not: a replica that is down for
        a moment keeps its keys)."""
        key = tuple(sorted(members))
        if self._ring is None or key != self._ring_members:
            self._ring, self._ring_members = HashRing(key), key
        return self._ring

    def cap(self, loads: Mapping[str, int]) -> int:
        """The most in-flight requests a replica may hold and still take one more."""
        return math.ceil((1 + self.epsilon) * (sum(loads.values()) + 1) / len(loads))

    def choose(self, tenant: str, tokens: Sequence[int], loads: Mapping[str, int],
               members: Sequence[str]) -> str:
        """A replica from ``loads`` (candidate -> its in-flight requests; not empty);
        ``members`` are all known replicas (the ring's points)."""
        if len(loads) == 1:
            return next(iter(loads))
        cap = self.cap(loads)
        hashes = block_hashes(tenant, tokens)
        chosen = None
        for h in reversed(hashes):  # the longest remembered prefix with room
            seen = self._table.get(h)
            if seen is not None and seen in loads and loads[seen] < cap:
                chosen = seen
                break
        if chosen is None:
            ring_key = hashes[min(RING_KEY_BLOCKS, len(hashes)) - 1]
            # The least loaded candidate is always under the cap, so one qualifies.
            chosen = next(m for m in self.ring([*members, *loads]).walk(ring_key)
                          if m in loads and loads[m] < cap)
        self._remember(hashes, chosen)
        return chosen

    def _remember(self, hashes: list[int], replica: str) -> None:
        for h in hashes:
            self._table[h] = replica
            self._table.move_to_end(h)
        while len(self._table) > self._table_entries:
            self._table.popitem(last=False)

    def forget(self, replica: str) -> None:
        """Drop what the table says about a replica that left the pool."""
        for h in [h for h, r in self._table.items() if r == replica]:
            del self._table[h]
