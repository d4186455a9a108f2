"""Per-organisation caps on concurrent work in this process (pipelines, sync runs).

Beyond its cap an organisation gets 429 with ``Retry-After`` at once instead of
queueing: a queue would hold the client's connection and still overload the
database (or the threads) when it drains, and one organisation must never take
what the others need.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from infrastructure.problems import Problem, problem_type


class OrgSlots:
    """At most ``limit`` concurrent holders per organisation (in this process).

    Used from the event loop only, so the counts need no lock. ``what`` and
    ``setting`` name the work and the setting that caps it in the 429.
    """

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self._held: Counter[str] = Counter()

    def has_room(self, org_id: str, limit: int | None = None) -> bool:
        """Whether ``hold`` would succeed now (from the event loop: nothing can change it
        before the caller's next ``await``). ``limit``: the organisation's own cap."""
        return self._held[org_id] < (self.limit if limit is None else limit)

    @contextlib.contextmanager
    def hold(self, org_id: str, limit: int | None = None) -> Iterator[None]:
        """Hold a slot; ``limit`` is the organisation's own cap, overriding the global one."""
        cap = self.limit if limit is None else limit
        if self._held[org_id] >= cap:
            whose = self.setting if limit is None else "the organisation's own limit"
            raise Problem(
                429,
                f"your organisation already runs {cap} {self.what} at once "
                f"({whose}); retry when one has finished",
                type_=problem_type("too-many-concurrent"),
                headers={"Retry-After": "1"},
            )
        self._held[org_id] += 1
        try:
            yield
        finally:
            self._held[org_id] -= 1
            if not self._held[org_id]:
                del self._held[org_id]
