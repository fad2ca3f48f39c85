"""Leases in the registry: one holder at a time for a named job (the loop of one model), so two
host processes on one registry never both deploy it.

* **PostgreSQL**: ``pg_try_advisory_lock`` on the registry connection. The server releases it
  when the holder's session ends, however the process died (SIGKILL included), so another
  host takes over at its next try. The ``leases`` row only says who holds it.
* **SQLite**: the ``leases`` row is the lease: taken when free or expired, renewed by a keeper
  thread every ``ttl_s / 3``; a holder killed without releasing blocks the job for at most
  ``ttl_s``. A holder that could not renew in time (paused, disk stalled) has lost it:
  :attr:`Lease.held` turns false and the caller stops driving.

    lease = Lease(registry, "loop/digits")
    if lease.acquire():          # False: another host drives it (lease.holder() says who)
        try: ...                 # check lease.held between steps
        finally: lease.release()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from deploy.fleet.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0

_TAKE = (
    "INSERT INTO leases (name, holder, acquired, expires) VALUES (?,?,?,?) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires, "
    "acquired = CASE WHEN leases.holder = excluded.holder THEN leases.acquired "
    "ELSE excluded.acquired END "
    "WHERE leases.holder = excluded.holder OR leases.expires < ?"
)
_RECORD = (
    "INSERT INTO leases (name, holder, acquired, expires) VALUES (?,?,?,?) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired = excluded.acquired, "
    "expires = excluded.expires"
)


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(
        self,
        registry: Registry,
        name: str,
        *,
        holder: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry, self.name, self.ttl_s, self.clock = registry, name, ttl_s, clock
        self.holder_id = holder or default_holder()
        self._held = False
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """True while this process holds the lease (false once lost or released)."""
        return self._held

    def acquire(self) -> bool:
        """Take the lease if it is free (or renew it if held); start the keeper thread."""
        if self._held:
            return self.renew()
        db = self.registry._db
        now = self.clock()
        locked = None
        try:
            with self.registry._tx():
                locked = db.try_lock(self.name)
                if locked is None:  # SQLite: the row is the lease
                    cur = db.execute(_TAKE, (self.name, self.holder_id, now, now + self.ttl_s, now))
                    self._held = cur.rowcount == 1
                elif locked:
                    db.execute(_RECORD, (self.name, self.holder_id, now, now + self.ttl_s))
                    self._held = True
        except BaseException:
            if locked:  # a session lock outlives the transaction that took it
                with self.registry._lock:
                    db.unlock(self.name)
            raise
        if self._held:
            log.info("lease %s taken by %s", self.name, self.holder_id)
            self._start_keeper()
        return self._held

    def renew(self) -> bool:
        """Extend the lease; False (and :attr:`held` false) when it was lost."""
        if not self._held:
            return False
        db = self.registry._db
        now = self.clock()
        try:
            with self.registry._tx():
                if db.holds_lock(self.name) is False:
                    ok = False
                else:
                    cur = db.execute(
                        "UPDATE leases SET expires = ? WHERE name = ? AND holder = ? "
                        "AND expires >= ?",
                        (now + self.ttl_s, self.name, self.holder_id, now),
                    )
                    ok = cur.rowcount == 1 or db.holds_lock(self.name) is True
        except Exception as exc:
            if not self.registry.is_transient(exc):
                raise
            log.warning("lease %s: renewal failed (%s); trying again", self.name, exc)
            return True  # still ours until it expires; the keeper tries again
        if not ok:
            log.warning("lease %s lost by %s", self.name, self.holder_id)
            self._held = False
        return ok

    def release(self) -> None:
        """Give the lease up (a no-op when not held)."""
        self._stop.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(5)
        self._keeper = None
        if not self._held:
            return
        self._held = False
        with self.registry._tx() as db:
            db.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (self.name, self.holder_id)
            )
        with self.registry._lock:
            self.registry._db.unlock(self.name)
        log.info("lease %s released by %s", self.name, self.holder_id)

    def holder(self) -> str | None:
        """Who holds the lease now according to the registry (None: nobody)."""
        rows = self.registry._all("SELECT holder, expires FROM leases WHERE name = ?", (self.name,))
        with self.registry._lock:
            taken = self.registry._db.lock_taken(self.name)
        if not rows or taken is False:  # PostgreSQL: the row of a dead holder stays
            return None
        if taken is None and float(rows[0][1]) < self.clock():
            return None  # SQLite: expired
        return str(rows[0][0])

    def _start_keeper(self) -> None:
        if self._keeper is not None and self._keeper.is_alive():
            return
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name=f"lease {self.name}", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # the registry closed or broke: the lease is gone
                log.warning("lease %s: cannot renew (%s); given up", self.name, exc)
                self._held = False
                return
