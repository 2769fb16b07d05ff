"""The fault-injecting proxy of tests/fault_proxy.py (per-object 403/404/500/503 and dropped connections), with
what a whole store does besides: slow answers and outages."""

from __future__ import annotations

import threading
import time

from tests.fault_proxy import FaultProxy


class StoreProxy(FaultProxy):
    """:class:`FaultProxy` plus :meth:`slow` (answers delayed) and :meth:`outage` (every request refused with 503
    SlowDown, for a time, from the first request that matches)."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.delays: dict[str, float] = {}
        self.outage_hits = 0
        self._outage: tuple[str, float] | None = None
        self._outage_until: float | None = None
        self._guard = threading.Lock()

    def slow(self, path_part: str, seconds: float) -> None:
        """Answer requests whose path contains ``path_part`` ``seconds`` late."""
        self.delays[path_part] = seconds

    def outage(self, seconds: float, starting_at: str = "") -> None:
        """Refuse every request for ``seconds`` from the first one whose path contains ``starting_at``."""
        self._outage, self._outage_until = (starting_at, seconds), None

    def _fault(self, method: str, path: str):
        with self._guard:
            now = time.monotonic()
            if self._outage is not None and self._outage_until is None and self._outage[0] in path:
                self._outage_until = now + self._outage[1]
            if self._outage_until is not None and now < self._outage_until:
                self.outage_hits += 1
                return 503
        for part, seconds in self.delays.items():
            if part in path:
                time.sleep(seconds)
        return super()._fault(method, path)
