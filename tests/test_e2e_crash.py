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

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.keys import init_keys, load_private
from deploy.push import BrokerAddress, Pusher, push_model
from agent.messages import NeedRequest
from tests.agent_proc import AgentProcess, Observer
from tests.broker import Broker
from tests.e2e_host import (
    GATES,
    ScriptedHost,
    agent_config,
    assert_digits_serving,
    model_files,
    pointer_sha,
    sha256_file,
    sign_model,
    store_problems,
)
from tests.modelzoo import model
from tests.models.bad_models import big_model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

CHUNK = 32 * 1024  # a ~2 MiB model in 64 chunks; the bitmap is made durable every 1 MiB
NEW_SIZE = 2 * 2**20 - 8192  # 64 chunks of 32 KiB with the flatbuffer overhead

# crash point -> what the restarted agent must show: "old" (current = the old model, the new
# transfer resumes), "trial" (the trial is rolled back with crashed_in_trial), "new" (the
# commit had switched current: the new model is installed).
CRASH_POINTS = {
    "after_chunk:3": "old",
    "after_chunk:40": "old",
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


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """A state dir with digits_int8 r1 committed by a real agent, and the key that signed it.
    Each test copies it, so only one agent has to install the old model."""
    root = tmp_path_factory.mktemp("seed")
    keys = root / "keys"
    init_keys(keys)
    broker = Broker(root / "broker").start()
    try:
        agent = AgentProcess(broker, root / "state", keys / "edgeloop.pub",
                             extra_args=agent_config(root)).start()  # fmt: skip
        try:
            result = push_model(
                model("digits_int8"), "pi-01", BrokerAddress(broker.host, broker.port),
                load_private(keys), name="digits", version="1.1", release=1, gates=GATES,
                progress=None, timeout_s=60,
            )  # fmt: skip
            assert result.ok and result.outcome == "committed", result
        finally:
            assert agent.stop() == 0
    finally:
        broker.stop()
    yield root / "state", keys, result.sha256


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


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_at_point_leaves_old_or_new_complete(
    point: str,
    seeded: tuple[Path, Path, str],
    new_model: Path,
    broker: Broker,
    tmp_path: Path,
    keys_dir: Path,
    start_agent: Callable[..., AgentProcess],
) -> None:
    seed_state, _seed_keys, old_sha = seeded
    expect = CRASH_POINTS[point]
    state_dir = tmp_path / "state-pi-01"
    shutil.copytree(seed_state, state_dir)
    key = load_private(keys_dir)  # pointers are not re-verified: any trusted key signs r2
    args = agent_config(tmp_path)
    signed = sign_model(new_model, key, release=2, chunk_size=CHUNK)
    new_sha, size = signed.manifest.sha256, signed.manifest.size
    assert signed.manifest.chunk_count == 64

    agent = start_agent(state_dir=state_dir, extra_args=args, env={"EDGELOOP_CRASH_AT": point})
    with ScriptedHost(broker) as host:
        host.offer(new_model.read_bytes(), signed)
        host.deploy(signed)
        rc = agent.wait_exit(60)
    assert rc == -9, f"the agent did not die at {point} (rc {rc}):\n{agent.log()}"

    # The state directory exactly as the crash left it.
    assert store_problems(state_dir) == []
    cur = pointer_sha(state_dir)
    assert cur in (old_sha, new_sha)
    assert cur == (new_sha if expect == "new" else old_sha), point
    if new_sha in model_files(state_dir):
        assert sha256_file(state_dir / "models" / f"{new_sha}.tflite") == new_sha
    durable = durable_chunks(state_dir, new_sha)

    topics = [f"edgeloop/dev/pi-01/{k}" for k in ("state", "events", "need")]
    with Observer(broker, topics) as obs:
        agent.env = {}
        agent.start()
        if expect == "trial":
            ev = obs.wait_event("rolled_back", 30, sha256=new_sha)
            assert ev["code"] == "crashed_in_trial", ev
        assert store_problems(state_dir) == []
        if expect == "new":
            assert_digits_serving_sha(agent, new_sha)
            assert pointer_sha(state_dir, "last_good") == old_sha
            return
        if expect == "trial":
            assert pointer_sha(state_dir) == old_sha
            assert_digits_serving(agent, old_sha)
        # Finish the install: same manifest again (the agent resumes a staged transfer, or
        # says it was already accepted), then if needed a new release of the same bytes.
        with Pusher(BrokerAddress(broker.host, broker.port), "pi-01", progress=None) as pusher:
            result = pusher.push(new_model, signed, timeout_s=60, gates=GATES)
        if not result.ok:
            assert result.outcome == "duplicate" and result.code == "replayed", result
            assert new_sha in model_files(state_dir)  # complete on disk: nothing to move
            signed = sign_model(new_model, key, release=3, chunk_size=CHUNK)
            with Pusher(BrokerAddress(broker.host, broker.port), "pi-01", progress=None) as p:
                result = p.push(new_model, signed, timeout_s=60, gates=GATES)
        assert result.ok, (point, result)
        # Only missing chunks move: no need after the restart names a durable chunk, and the
        # host never served more than what was missing (chunks the broker had queued for the
        # agent's persistent session count for the rest).
        asked = {i for n in obs.json_messages("/need") for i in NeedRequest.from_ranges(
            n["sha256"], [range(a, b) for a, b in n["ranges"]]).indexes()}  # fmt: skip
        assert not asked & durable, (point, sorted(durable), sorted(asked))
        missing = signed.manifest.chunk_count - len(durable) if point.startswith("after_chunk") else 0
        assert result.chunks_sent <= missing, (point, len(durable), result.chunks_sent)
        assert result.bytes_sent < size or not durable
    assert pointer_sha(state_dir) == new_sha
    assert store_problems(state_dir) == []
    assert agent.state()["model"]["sha256"] == new_sha  # type: ignore[index]


def assert_digits_serving_sha(agent: AgentProcess, sha256: str) -> None:
    state = agent.state()
    assert state is not None and state["model"]["sha256"] == sha256, state
