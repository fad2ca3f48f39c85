"""The shared chunk stream ``{p}/models/{sha256}/chunks``: the two rules both sides follow.

The host publishes an artifact's chunks once, in index order, for every device of a wave that
installs it (deploy.fleet.fleet_push). MQTT keeps the order of one publisher's messages on one topic
for each subscriber, so a device that receives stream chunk ``j`` knows every earlier stream
chunk has either arrived or is lost: it asks again, through its own ``need`` topic, only for
what the stream has already passed (:class:`StreamPosition`). Its needs carry
``"stream": true``; the host answers from such a need only the indexes its stream has already
published (:class:`StreamCursor`), so a request that runs ahead of the stream is left to the
stream instead of being sent twice. The agent (agent.delivery.transfer) and the simulator
(deploy.sim.install) both use :class:`StreamPosition`; the host uses :class:`StreamCursor`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.wire.messages import NeedRequest

#: A device that has joined but seen no stream chunk joins again after each stall, this often,
#: before it pulls on its own: the host waits for the whole wave to join before streaming.
MAX_REJOINS = 3


@dataclass
class StreamPosition:
    """A device's place on the stream: ``next`` = 1 + the highest stream index received."""

    next: int = 0
    joined: bool = False  # the join (the first need with ``stream: true``) has been sent
    rejoins: int = 0

    def stalled(self) -> bool:
        """No chunk for a while. True: join again (the stream has not started, the host is
        still waiting for the rest of the wave). False: leave the stream and pull the rest
        (it is over, or this device lost it)."""
        if self.next == 0 and self.rejoins < MAX_REJOINS:
            self.rejoins += 1
            self.joined = False
            return True
        return False

    def passed(self, index: int) -> None:
        """A chunk arrived on the stream at ``index``."""
        self.next = max(self.next, index + 1)

    def lost(self, indexes: Iterable[int]) -> list[int]:
        """Of chunks still missing, those the stream has passed: lost on the way (or before
        this device joined), to be asked for through ``need``. The rest is still coming."""
        return [i for i in indexes if i < self.next]


@dataclass
class StreamCursor:
    """The host's side: how many chunks of the stream it has published so far (in order)."""

    chunk_count: int
    published: int = 0

    @property
    def done(self) -> bool:
        return self.published >= self.chunk_count

    def answer(self, need: NeedRequest) -> list[int]:
        """The indexes of ``need`` to send on the device's own chunk topic now: all of them
        from a device that pulls on its own, only those already streamed from one that
        listens to the stream (the rest reach it on the stream)."""
        indexes = need.indexes()
        if not need.stream:
            return indexes
        return [i for i in indexes if i < self.published]
