"""Throttling-aware decisions (issue 11, item 8): hot windows (throttle bits, or temperature at
or above rollup.HOT_C) are kept apart from the device metrics; a decision made only on hot
windows says so, and a slow hot window does not make a model miss its target."""

from __future__ import annotations

from pathlib import Path

from agent.wire.status import Telemetry
from deploy.fleet.registry import Registry
from deploy.fleet.rollup import HOT_C, is_hot, rollup, window_row
from deploy.loop.driver import build_context
from deploy.loop.optimizer import decide
from tests.records import telemetry
from tests.test_optimizer import PI4, make_registry, sha, targets, vid


def _window(seq: int, p95: float, *, throttled: int = 0, temp: float = 55.0) -> dict[str, object]:
    return telemetry(seq, 1000.0 + seq, sha=sha("fp32"), p95=p95, temp_c=temp, throttled=throttled)


def test_hot_windows_are_kept_apart_from_the_roll_up():
    rows = [
        window_row("pi4-01", PI4, Telemetry.from_dict(w))
        for w in (
            _window(1, 5.0),
            _window(2, 5.2),
            _window(3, 5.1),
            _window(4, 30.0, throttled=0x4),
            _window(5, 31.0, temp=HOT_C + 2),
            _window(6, 29.0, throttled=0x2),
        )
    ]
    assert [is_hot(r) for r in rows] == [False] * 3 + [True] * 3
    st = rollup(PI4, "v", rows)
    assert st.p95_ms == 5.1 and st.p95_max_ms == 5.2  # the throttled 30 ms windows do not count
    assert st.hot_windows == 3 and st.throttled_windows == 2 and not st.judged_on_hot
    assert st.inferences == 600
    only_hot = rollup(PI4, "v", rows[3:])
    assert only_hot.judged_on_hot and only_hot.p95_ms == 30.0 and only_hot.windows == 3


def test_a_hot_board_does_not_make_the_model_miss_and_a_decision_on_hot_windows_says_so(
    tmp_path: Path,
) -> None:
    make_registry(tmp_path / "r.db").close()
    tgt = targets({"rpi4b-cpu": {"p95_ms": 8}})
    with Registry(tmp_path / "r.db") as reg:
        reg.upsert_device("pi4-01", hardware_class=PI4)
        for seq in range(1, 5):  # only hot windows: slow because the board throttles
            reg.record_telemetry("pi4-01", _window(seq, 12.0, throttled=0x4))
        hot = decide(build_context(reg, "digits", PI4, tgt, current=vid("fp32")))
        assert hot.action == "deploy"
        assert "judged on 4 throttled/hot window(s)" in hot.reason
        assert hot.evidence["judged_on_hot"] is True
        for seq in range(5, 9):  # the board cools down: the same model meets the target
            reg.record_telemetry("pi4-01", _window(seq, 6.0))
        cool = decide(build_context(reg, "digits", PI4, tgt, current=vid("fp32")))
        assert cool.action == "promote", cool.reason
        assert "throttled" not in cool.reason
        assert cool.evidence["measured"][vid("fp32")]["hot_windows"] == 4
