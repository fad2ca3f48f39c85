"""The loop service's host worker: the same ingest as ``edge-deploy collect``.

:class:`Collector` is :class:`~deploy.fleet.ingest.Ingest` configured for a process that also
drives the loop (``edge-deploy optimize``, ``rollout``, the demo): a clean session under a
fresh client id (nothing waits at the broker for a tool that is not running), its own
subscription unless a ``share_group`` is given, and short batches so a decision sees a window
within ~50 ms of its arrival. Messages are read by :func:`deploy.fleet.inbound.read_message`,
stored in batched transactions and acknowledged after commit, exactly as the standalone worker
does; :meth:`drain` waits until everything received so far is committed.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.mqtt.types import IncomingMessage
from deploy.fleet.ingest import Ingest
from deploy.fleet.registry import Registry
from deploy.mqtt import BrokerAddress


class Collector(Ingest):
    def __init__(
        self,
        registry: Registry,
        broker: BrokerAddress,
        *,
        prefix: str = "edgeloop",
        share_group: str | None = None,
        batch_s: float = 0.05,
    ) -> None:
        super().__init__(
            registry,
            broker,
            client_id=None,
            prefix=prefix,
            share_group=share_group,
            batch_s=batch_s,
            session_expiry_s=0,
        )

    def start(self, timeout: float = 10.0) -> Collector:
        super().start(timeout)
        return self

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every message received so far is committed to the registry."""
        return self.wait_idle(timeout)

    def apply(self, batch: Sequence[IncomingMessage] | IncomingMessage) -> None:
        """Store one message or a batch (malformed ones are dropped and counted)."""
        super().apply([batch] if isinstance(batch, IncomingMessage) else batch)
