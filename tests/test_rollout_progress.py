"""The live rollout view: per-wave counts from the plan and the runner's queue, the plain line
(not a terminal) and the rich table (a terminal)."""

from __future__ import annotations

import io

import pytest

from deploy.cli.rollout_view import ProgressView, progress_table
from deploy.fleet.rollout_plan import RolloutPlan, RolloutPolicy
from deploy.fleet.rollout_progress import progress_line, snapshot

Console = pytest.importorskip("rich.console", reason="rich is a host dependency").Console

DEVICES = [f"d{i:02d}" for i in range(10)]


def _plan() -> RolloutPlan:
    plan = RolloutPlan(DEVICES, RolloutPolicy(canary=1, waves=(4,), max_failure_ratio=0.5))
    plan.start(0.0)
    plan.record("d00", "committed", 1.0)  # wave 1: d01..d04
    plan.record("d01", "committed", 2.0)
    plan.record("d02", "rejected", 2.0, "probe failed")
    return plan


def test_snapshot_counts_each_wave_and_what_waits_behind_the_in_flight_limit() -> None:
    p = snapshot(_plan(), queued={"d04"}, withdrawn=(), rollbacks={}, elapsed_s=3.21)
    canary, wave1, rest = p.waves
    assert (canary.size, canary.done, canary.pending) == (1, 1, 0)
    assert (wave1.size, wave1.done, wave1.failed, wave1.pending, wave1.queued) == (4, 1, 1, 1, 1)
    assert (rest.size, rest.done, rest.pending) == (5, 0, 0)  # not started
    assert (p.state, p.wave, p.elapsed_s) == ("waves", 1, 3.2)
    line = progress_line(p)
    assert "canary 1/1 done" in line and "wave 1 1/4 done, 1 failed, 1 pending, 1 queued" in line
    assert "wave 2" not in line  # only the waves started


def test_after_an_abort_the_line_shows_withdrawn_devices_and_the_roll_back() -> None:
    plan = _plan()
    plan.record("d03", "rejected", 3.0)  # 2 of 5 notified: no abort at 50 %
    plan.abort("operator")
    p = snapshot(plan, queued=(), withdrawn={"d04"}, rollbacks={"d00": "committed",
                 "d01": "pending"}, elapsed_s=4.0)  # fmt: skip
    assert p.waves[1].withdrawn == 1 and p.waves[1].pending == 0
    assert (p.rolled_back, p.rollback_pending, p.rollback_failed) == (1, 1, 0)
    line = progress_line(p)
    assert "1 withdrawn" in line and "roll-back 1 done, 0 failed, 1 pending" in line
    assert line.endswith("(operator)")


def test_rich_table_on_a_terminal_and_lines_otherwise() -> None:
    p = snapshot(_plan(), queued={"d04"}, withdrawn=(), rollbacks={}, elapsed_s=1.0)
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(progress_table(p))
    text = console.export_text()
    assert "canary" in text and "wave 1" in text and "queued" in text
    plain = io.StringIO()
    with ProgressView(plain) as view:  # a StringIO is not a terminal
        view.update(p)
        view.update(p)
    assert plain.getvalue().count("\n") == 2 and "wave 1 1/4 done" in plain.getvalue()
    tty = io.StringIO()
    with ProgressView(tty, tty=True) as view:
        view.update(p)
    assert "┃" in tty.getvalue() or "|" in tty.getvalue()  # a drawn table, not a line
    assert "1/4 done" not in tty.getvalue()
