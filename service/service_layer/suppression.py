"""The erased customers, as a worker or a rebuild keeps them in memory.

The list (keyed hashes, service/adapters/erasure_store.py) is read at the first batch and
again whenever a partition clock shows a higher erasure generation than the one read: every
`cx-stream erase` raises the generation before it sweeps the partitions, and the sweep writes
it into each clock atomically with the deletion. A batch that commits a partition read its
clock after any sweep of it (the sweep moves the clock's `seq` on, so an earlier read
conflicts), so it checks its events against a list that holds every customer erased there.

Checking an event costs nothing while nobody was erased, and one HMAC and one set lookup
after that.
"""

from __future__ import annotations

import hmac

from service.adapters.erasure_store import ErasureKeyError, ErasureStore
from service.domain.erasure import key_fingerprint


class Suppression:
    def __init__(self, store: ErasureStore, key: bytes | None) -> None:
        self._store = store
        self._key = key
        # HMAC with the key already absorbed: each check copies it (cheaper than hmac.digest)
        self._mac = None if key is None else hmac.new(key, digestmod="sha256")
        self._digests: frozenset[bytes] = frozenset()
        self.generation = -1  # not read yet

    @property
    def loaded(self) -> bool:
        return self.generation >= 0

    def __len__(self) -> int:
        return len(self._digests)

    async def load(self) -> None:
        """Read the list; ErasureKeyError when it holds ids and our key cannot match them."""
        generation, digests, fingerprint = await self._store.read()
        if digests:
            if self._key is None:
                raise ErasureKeyError(
                    f"{len(digests):,} customers were erased, but CX_ERASURE_KEY (or "
                    "CX_ERASURE_KEY_FILE) is not set: their events could not be recognised")
            if fingerprint is not None and fingerprint != key_fingerprint(self._key):
                raise ErasureKeyError(
                    "CX_ERASURE_KEY is not the key the erased customers were recorded with")
        self._digests = digests
        self.generation = generation

    def erased(self, customer_id: str | None) -> bool:
        """Whether the customer was erased (an unidentified caller never was)."""
        if not self._digests or customer_id is None or self._mac is None:
            return False
        mac = self._mac.copy()
        mac.update(customer_id.encode("utf-8"))
        return mac.digest() in self._digests  # the same value as domain.erasure.digest
