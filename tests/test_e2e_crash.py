"""RELIABILITY P1 end to end: an agent killed (SIGKILL) at any step of an install never leaves a
half-installed model, and after a restart it resumes instead of starting over.

For every crash point the real agent runs with ``EDGELOOP_CRASH_AT`` and kills itself there
during a real push over Mosquitto; the test then checks the state directory as the crash left it
(``current`` names a complete file, nothing partial outside staging/), restarts the agent without
the hook and checks that the old model serves or the new one is installed, that a crash during
the trial is rolled back at start (``crashed_in_trial``), and that finishing the install moves
only the chunks that were not yet durable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.wire.manifest import SignedManifest
from agent.wire.messages import NeedRequest
from deploy.mqtt import BrokerAddress
from deploy.push import Pusher, PushResult
from tests.agent_proc import Observer
from tests.delivery_helpers import model_files, pointer_sha, sha256_file, store_problems
from tests.e2e_host import (
    GATES,
    SeededDevice,
    assert_digits_serving,
)
from tests.models.bad_models import big_model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

CHUNK = 32 * 1024  # 64 chunks; the agent makes staged chunks durable every 4 MiB and at the last
NEW_SIZE = 2 * 2**20 - 8192  # ~2 MiB with the flatbuffer overhead

# crash point -> what the restarted agent must show: "old" (current is still the old model),
# "trial" (the trial is rolled back at start with crashed_in_trial), "new" (the commit had
# switched current: the new model is installed, last_good is the old one).
CRASH_POINTS = {
    "after_chunk:3": "old",  # nothing durable yet: the resume fetches what is not durable
    "after_chunk:40": "old",  # the same, later in the transfer
    "before_finish_rename": "old",
    "after_finish_rename": "old",
    "before_pointer_rename:trial": "old",
    "after_set_trial": "trial",
    "during_trial": "trial",
    "before_trial_commit": "trial",
    "before_commit": "trial",
    "before_pointer_rename:current": "trial",
    "after_pointer_rename:current": "new",
    "after_commit": "new",
}


@pytest.fixture
def new_model(tmp_path: Path) -> Path:
    path = tmp_path / "fc-2mb.tflite"
    path.write_bytes(big_model(NEW_SIZE, seed=1))
    return path


def durable_chunks(state_dir: Path, sha256: str) -> set[int]:
    """Chunk indexes the bitmap in staging/ marks as durable (bit i = LSB-first in byte i//8)."""
    path = state_dir / "staging" / f"{sha256}.bitmap"
    bits = path.read_bytes() if path.exists() else b""
    return {i for i in range(len(bits) * 8) if bits[i >> 3] & (1 << (i & 7))}


def requested(obs: Observer) -> set[int]:
    out: set[int] = set()
    for n in obs.json_messages("/need"):
        ranges = [range(a, b) for a, b in n["ranges"]]
        out.update(NeedRequest.from_ranges(n["sha256"], ranges).indexes())
    return out


def push(seeded: SeededDevice, model: Path, signed: SignedManifest) -> PushResult:
    address = BrokerAddress(seeded.broker.host, seeded.broker.port)
    with Pusher(address, "pi-01", progress=None, key=seeded.key) as pusher:
        return pusher.push(model, signed, timeout_s=60, gates=GATES)


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_at_point_leaves_old_or_new_complete(
    point: str,
    seeded: SeededDevice,
    new_model: Path,
) -> None:
    old_sha = seeded.old_sha
    expect = CRASH_POINTS[point]
    signed = seeded.sign(new_model, chunk_size=CHUNK)
    new_sha, size, nchunks = (
        signed.manifest.sha256,
        signed.manifest.size,
        signed.manifest.chunk_count,
    )
    assert nchunks == 64

    agent = seeded.start(env={"EDGELOOP_CRASH_AT": point})
    state_dir = agent.state_dir
    with seeded.host(new_model, signed) as host:
        host.deploy(signed)
        rc = agent.wait_exit(60)
    assert rc == -9, f"the agent did not die at {point} (rc {rc}):\n{agent.log()}"

    # The state directory exactly as the crash left it.
    assert store_problems(state_dir) == []
    assert pointer_sha(state_dir) == (new_sha if expect == "new" else old_sha), point
    if new_sha in model_files(state_dir):
        assert sha256_file(state_dir / "models" / f"{new_sha}.tflite") == new_sha
    durable = durable_chunks(state_dir, new_sha)

    topics = [f"edgeloop/dev/pi-01/{k}" for k in ("state", "events", "need")]
    with Observer(seeded.broker, topics) as obs:
        agent.env = {}
        agent.start()  # the same state dir, no crash hook
        if expect == "trial":
            ev = obs.wait_event("rolled_back", 30, sha256=new_sha)
            assert ev["code"] == "crashed_in_trial", ev
        assert store_problems(state_dir) == []
        if expect == "new":
            state = agent.state()
            assert state is not None and state["model"]["sha256"] == new_sha, state
            assert pointer_sha(state_dir, "last_good") == old_sha
            return
        assert pointer_sha(state_dir) == old_sha
        assert_digits_serving(agent, old_sha)

        # Finish the install: the same manifest again (a staged transfer is resumed), else a
        # new release of the same bytes (the agent had accepted r2 already).
        result = push(seeded, new_model, signed)
        if not result.ok:
            assert result.outcome == "duplicate" and result.code == "replayed", result
            assert new_sha in model_files(state_dir)  # complete on disk: nothing to move
            result = push(seeded, new_model, seeded.sign(new_model, release=3, chunk_size=CHUNK))
        assert result.ok, (point, result)
        # Only missing chunks move: no need after the restart names a durable chunk, and the
        # host served at most the missing ones (QoS 1 chunks the scripted host had sent before
        # the crash, queued by the broker for the agent's persistent session, make up the rest:
        # the whole 2 MiB model fits in one request window).
        asked = requested(obs)
        assert not asked & durable, (point, sorted(durable), sorted(asked))
        missing = nchunks - len(durable) if point.startswith("after_chunk") else 0
        assert result.chunks_sent <= missing, (point, len(durable), result.chunks_sent)
        assert result.bytes_sent < size or not durable
    assert pointer_sha(state_dir) == new_sha
    assert store_problems(state_dir) == []
