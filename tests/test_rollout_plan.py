"""Staged rollout state machine: canary, waves, abort thresholds, timeout, roll-back list."""

from __future__ import annotations

import json

import pytest

from agent.errors import ConfigError
from deploy.fleet.rollout_plan import RolloutPlan, RolloutPolicy, wave_size

DEVICES = [f"pi-{i:02d}" for i in range(10)]


def test_canary_failure_aborts_before_anyone_else_is_notified():
    plan = RolloutPlan(DEVICES, RolloutPolicy(canary=1, waves=("50%",)))
    assert plan.start(0.0).notify == ("pi-00",)
    step = plan.record("pi-00", "rolled_back", 5.0, "trial p95 31 ms over 1.1 x target")
    assert step.state == "aborted" and "canary pi-00 failed: trial p95" in step.reason
    assert step.rollback == ()  # the canary rolled itself back
    assert set(plan.status) == {"pi-00"}  # nobody else was ever notified
    assert plan.tick(10_000.0).notify == ()


def test_waves_advance_on_success_and_finish():
    plan = RolloutPlan(DEVICES, RolloutPolicy(canary=1, waves=(2, "30%")))
    assert [len(w) for w in plan.waves] == [1, 2, 3, 4]  # leftovers form a last wave
    notified = list(plan.start(0.0).notify)
    for t in range(1, 11):
        step = None
        for d in [d for d in notified if plan.status[d] == "notified"]:
            step = plan.record(d, "committed", float(t))
        assert step is not None
        if step.state == "done":
            break
        notified += step.notify
    assert plan.state == "done" and plan.counts()["committed"] == 10
    assert notified == DEVICES


def test_wave_failures_over_threshold_abort_and_list_moved_devices():
    plan = RolloutPlan(DEVICES, RolloutPolicy(canary=1, waves=(4, "100%"), max_failure_ratio=0.2))
    plan.start(0.0)
    wave1 = plan.record("pi-00", "committed", 1.0).notify
    assert wave1 == ("pi-01", "pi-02", "pi-03", "pi-04")
    assert plan.record("pi-01", "committed", 2.0).rollback == ()
    assert plan.record("pi-02", "rejected", 2.5, "incompatible").state == "waves"  # 1/5 = 20 %
    step = plan.record("pi-03", "rolled_back", 3.0, "probe crashed")  # 2/5 > 20 %
    assert step.state == "aborted" and "2 of 5 notified devices failed" in step.reason
    # committed (canary, pi-01) and still silent (pi-04, may yet commit) go back
    assert step.rollback == ("pi-00", "pi-01", "pi-04")
    assert plan.record("pi-04", "committed", 4.0).rollback == ()  # already on the list
    assert not any(plan.status.get(d) for d in DEVICES[5:])  # no new device notified
    assert plan.abort("again").rollback == ()


def test_a_wave_below_the_success_ratio_aborts_when_complete():
    pol = RolloutPolicy(canary=1, waves=(4,), success_ratio=0.75, max_failure_ratio=0.5)
    plan = RolloutPlan(DEVICES[:5], pol)
    plan.start(0.0)
    plan.record("pi-00", "committed", 1.0)
    for d, outcome in (("pi-01", "committed"), ("pi-02", "failed"), ("pi-03", "committed")):
        assert plan.record(d, outcome, 2.0).state == "waves"
    step = plan.record("pi-04", "failed", 3.0)  # 3/4 ok would pass; 2/4 does not
    assert step.state == "aborted" and "2/4 committed" in step.reason
    assert step.rollback == ("pi-00", "pi-01", "pi-03")


def test_timeout_aborts_and_rolls_back_silent_and_committed_devices():
    plan = RolloutPlan(DEVICES[:4], RolloutPolicy(canary=1, waves=(3,), wave_timeout_s=60.0))
    plan.start(0.0)
    plan.record("pi-00", "committed", 10.0)  # wave 1 starts at t=10
    plan.record("pi-01", "committed", 20.0)
    assert plan.tick(70.0).state == "waves"  # 60 s not yet over
    step = plan.tick(70.5)
    assert step.state == "aborted" and "no outcome from pi-02, pi-03" in step.reason
    assert step.rollback == ("pi-00", "pi-01", "pi-02", "pi-03")
    late = plan.record("pi-02", "rolled_back", 80.0)
    assert late.rollback == () and late.notify == ()


def test_plan_survives_a_restart_through_json():
    plan = RolloutPlan(DEVICES, RolloutPolicy(canary=2, waves=("50%",)))
    plan.start(0.0)
    plan.record("pi-00", "committed", 1.0)
    again = RolloutPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    step = again.record("pi-01", "committed", 2.0)
    assert step.notify == tuple(DEVICES[2:7]) and again.wave == 1
    assert again.record("pi-01", "committed", 3.0).reason.startswith("ignored")  # duplicate


def test_policy_errors_are_reported_together():
    with pytest.raises(ConfigError) as err:
        RolloutPlan(DEVICES, RolloutPolicy(canary=0, waves=("abc", "150%"), success_ratio=0.0))
    msg = err.value.message
    for part in ("canary must be >= 1", "'abc' is neither", "'150%' is neither", "success_ratio"):
        assert part in msg
    with pytest.raises(ConfigError, match="listed twice"):
        RolloutPlan(["a", "a"])
    assert wave_size("25%", 10) == 3 and wave_size(2, 10) == 2
    with pytest.raises(ValueError):
        RolloutPlan(DEVICES).record("pi-00", "exploded", 0.0)
