"""The rollout runner's bookkeeping with verdicts arriving in batches (as from a FleetPusher
serving hundreds of devices): an abort in the middle of a batch, queued pushes withdrawn, a
commit handled after the abort rolled back, every deployment row closed."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from deploy.fleet.fleet_push import PushJob
from deploy.fleet.registry import Registry
from deploy.fleet.rollout import Deployer, RolloutRunner
from deploy.fleet.rollout_plan import RolloutPolicy
from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.push import PushResult
from tests import rollout_fleet as rf

DEVICES = [f"d{i:02d}" for i in range(40)]
FAILS = {"d01", "d02", "d03"}  # the first three of wave 1 (d01..d10)


class BatchPusher:
    """A FleetPusher stand-in: announces up to the limit, then answers them all at once."""

    new_sha = ""

    def __init__(self, _broker: Any, *, max_in_flight: int, **_kw: Any) -> None:
        self.max_in_flight = max_in_flight
        self.queued: deque[PushJob] = deque()
        self.sessions: dict[str, PushJob] = {}
        self.sent: list[tuple[str, str, float]] = []

    def __enter__(self) -> BatchPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def busy(self) -> bool:
        return bool(self.queued or self.sessions)

    def submit(self, jobs: list[PushJob]) -> None:
        self.queued.extend(jobs)

    def cancel(self) -> list[PushJob]:
        out = list(self.queued)
        self.queued.clear()
        return out

    def poll(self, _timeout: float) -> list[tuple[str, PushResult]]:
        while self.queued and len(self.sessions) < self.max_in_flight:
            job = self.queued.popleft()
            self.sessions[job.device] = job
            self.sent.append((job.device, job.signed.manifest.sha256, 0.0))
        out = []
        for device, job in self.sessions.items():
            m = job.signed.manifest
            fail = device in FAILS and m.sha256 == self.new_sha
            out.append((device, PushResult(not fail, "rolled_back" if fail else "committed",
                                           None, "probe failed" if fail else "ok",
                                           m.sha256, m.release)))  # fmt: skip
        self.sessions.clear()
        return out


def test_abort_mid_batch_withdraws_the_queue_and_rolls_back_late_commits(
    tmp_path: Path, keys_dir: Path
) -> None:
    with Registry(tmp_path / "r.sqlite") as reg:
        old, new = rf.add_variants(reg, tmp_path / "v")
        BatchPusher.new_sha = new.sha256
        with reg.transaction():
            for d in DEVICES:
                reg.upsert_device(d, hardware_class=rf.CLASS)
        deployer = Deployer(reg, BrokerAddress("127.0.0.1", 1), load_private(keys_dir), rf.MODEL)
        policy = RolloutPolicy(canary=1, waves=(10,), max_failure_ratio=0.2)
        runner = RolloutRunner(deployer, new, dict.fromkeys(DEVICES, old), class_id=rf.CLASS,
                               policy=policy, max_in_flight=4)  # fmt: skip
        runner.pusher = BatchPusher  # type: ignore[assignment]
        out = runner.run(DEVICES)
        # d01..d04 answered in one batch: the abort came at d03 (3 of 11 > 20 %), and d04's
        # commit, handled after it, is rolled back like the canary's
        assert out.state == "aborted" and out.reason.startswith("3 of 11 notified")
        assert out.withdrawn == [f"d{i:02d}" for i in range(5, 11)]
        assert out.rolled_back == {"d00": "committed", "d04": "committed"}
        got_new = [d for d, sha, _t in runner.sent if sha == new.sha256]
        assert got_new == ["d00", "d01", "d02", "d03", "d04"]  # nobody after the abort
        backs = [d for d, sha, _t in runner.sent if sha == old.sha256]
        assert sorted(backs) == ["d00", "d04"]
        rows = {r.device: r.state for r in reg.rollout_devices(out.rollout_id)}
        assert rows["d04"] == rows["d00"] == "rolled_back" and rows["d05"] == "withdrawn"
        open_rows = reg._all("SELECT COUNT(*) FROM deployments WHERE outcome IS NULL")
        assert open_rows[0][0] == 0  # every deployment recorded has its outcome
