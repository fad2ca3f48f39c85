"""RELIABILITY P2 and P16 end to end: a flaky link costs only what was lost, a corrupted chunk
is fetched again, and every host -> device message may arrive twice or out of order without a
second install or a double count.

P2 puts tests/tcp_proxy.py between the agent and Mosquitto: it aborts the TCP connection at
chosen byte counts and flips a byte inside a chunk PUBLISH, and counts every byte the agent
received, retransmissions included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.broker import Broker
from tests.delivery_helpers import pointer_sha
from tests.e2e_host import (
    SeededDevice,
    assert_digits_serving,
)
from tests.models.bad_models import big_model
from tests.modelzoo import model
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

BIG = 5 * 2**20
INSTALL_KINDS = ("install_accepted", "install_verified", "trial_started", "committed")


@pytest.fixture(scope="module")
def big() -> bytes:
    return big_model(BIG, seed=2)


@pytest.fixture
def proxy(broker: Broker) -> Iterator[TcpProxy]:
    with TcpProxy(broker.host, broker.port) as p:
        yield p


def test_link_flapping_five_times_resumes_with_little_overhead(
    seeded: SeededDevice,
    big: bytes,
    proxy: TcpProxy,
) -> None:
    old_sha = seeded.old_sha
    signed = seeded.sign(big)
    sha, size = signed.manifest.sha256, signed.manifest.size
    agent = seeded.start(extra_args=["--broker", proxy.url])
    pid = agent.pid
    with seeded.host(big, signed) as host:
        start = proxy.bytes_down
        proxy.flap_at(start + k * size // 6 for k in range(1, 6))
        host.deploy(signed)
        host.wait_event("committed", sha, timeout=90)
        received = proxy.bytes_down - start
    assert proxy.flaps == 5 and proxy.connections >= 6
    stats = (
        f"{received} bytes received for a {size}-byte model; {proxy.publishes_down} "
        f"PUBLISH, {proxy.redelivered_down} redelivered ({proxy.redelivered_bytes} bytes), "
        f"{host.chunks_sent} chunks served for {signed.manifest.chunk_count}"
    )
    assert received <= 1.2 * size, stats
    assert agent.pid == pid
    assert pointer_sha(agent.state_dir) == sha
    assert pointer_sha(agent.state_dir, "last_good") == old_sha


def test_chunk_corrupted_on_the_wire_is_fetched_again(
    seeded: SeededDevice,
    big: bytes,
    proxy: TcpProxy,
) -> None:
    signed = seeded.sign(big)
    sha, size, chunk = signed.manifest.sha256, signed.manifest.size, signed.manifest.chunk_size
    agent = seeded.start(extra_args=["--broker", proxy.url])
    with seeded.host(big, signed) as host:
        proxy.corrupt_publishes(1, min_size=chunk // 2)  # a chunk, not the deploy command
        start = proxy.bytes_down
        host.deploy(signed)
        verified = host.wait_event("install_verified", sha, timeout=90)
        host.wait_event("committed", sha)
        received = proxy.bytes_down - start
    assert proxy.corrupted == 1
    assert verified.data["corrupt_chunks"] == 1
    # the timing split: first chunk <= all chunks in <= verified
    d = verified.data
    assert 0 <= d["first_chunk_s"] <= d["transfer_s"] <= d["seconds"] + 0.001, d
    assert host.chunks_sent == signed.manifest.chunk_count + 1  # only that chunk again
    assert received <= size + 2 * chunk, received
    assert pointer_sha(agent.state_dir) == sha


def test_duplicated_and_reversed_messages_install_once(seeded: SeededDevice) -> None:
    """Every host -> device message twice and in reverse order: the deploy command (same id and
    a new id), each need answered twice, each answer's chunks reversed and duplicated; after the
    commit, the whole recorded host traffic replayed again, newest first."""
    old_sha = seeded.old_sha
    data = model("digits_fp32").read_bytes()
    signed = seeded.sign(data, chunk_size=4096)
    sha, size = signed.manifest.sha256, signed.manifest.size
    agent = seeded.start()
    with seeded.host(data, signed) as host:
        host.order = lambda indexes: list(reversed(indexes)) * 2
        host.need_repeat = 2
        first = host.deploy(signed)
        host.deploy(signed, cmd_id=first)  # the same command delivered twice
        second = host.deploy(signed)  # the same manifest under a new command id
        host.wait_event("committed", sha)
        assert host.wait_reply(first, status="accepted")
        assert host.wait_reply(second).status == "duplicate"
        assert [r.status for r in host.replies_to(first)].count("accepted") == 1

        traffic = list(reversed(host.sent))
        assert len(traffic) > 3 * signed.manifest.chunk_count
        host.replay(traffic)
        replayed_reply = host.wait_reply(second, status="duplicate")
        assert replayed_reply.message in ("already installing", "already installed")
        # a state round trip after the replay: the agent has handled everything before it
        assert host.wait_reply(host.command("state")).status == "ok"
        assert host.replies_to(first)[-1].status == "duplicate"

        for kind in INSTALL_KINDS:
            assert len(host.events_of(kind, sha)) == 1, kind
        assert host.events_of("rolled_back") == host.events_of("rejected") == []
        verified = host.events_of("install_verified", sha)[0]
        assert verified.data["corrupt_chunks"] == 0
        for progress in host.events_of("install_progress", sha):
            assert progress.data["received_bytes"] <= size
        assert_digits_serving(agent, sha)
    assert pointer_sha(agent.state_dir) == sha
    assert pointer_sha(agent.state_dir, "last_good") == old_sha
    counters = json.loads((agent.state_dir / "counters.json").read_bytes())
    assert counters["releases"]["digits"] == 2
