"""The live view of a rollout: a ``rich`` table redrawn in place when the stream is a terminal,
one plain line per update otherwise (logs, pipes, CI)."""

from __future__ import annotations

from typing import Any, TextIO

from deploy.fleet.rollout_progress import Progress, progress_line


def progress_table(p: Progress) -> Any:
    """A ``rich`` table: a row per wave started, the roll-back below."""
    from rich.table import Table

    title = f"rollout {p.state}, {p.elapsed_s:.1f}s" + (f": {p.reason}" if p.reason else "")
    table = Table(title=title, title_justify="left")
    for name in ("wave", "devices", "done", "failed", "pending", "queued", "withdrawn"):
        table.add_column(name, justify="left" if name == "wave" else "right")
    for w in p.waves:
        started = w.index <= p.wave
        cells = [w.done, w.failed, w.pending, w.queued, w.withdrawn] if started else [""] * 5
        style = "red" if w.failed else ("green" if w.done == w.size else None)
        table.add_row(w.name, str(w.size), *map(str, cells), style=style if started else "dim")
    if p.rollback_pending or p.rolled_back or p.rollback_failed:
        total = p.rollback_pending + p.rolled_back + p.rollback_failed
        table.add_row(
            "roll-back",
            str(total),
            str(p.rolled_back),
            str(p.rollback_failed),
            str(p.rollback_pending),
            "",
            "",
            style="yellow",
        )
    return table


class ProgressView:
    """``with ProgressView(sys.stdout) as view: RolloutRunner(..., on_progress=view.update)``"""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._live: Any = None

    def __enter__(self) -> ProgressView:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, p: Progress) -> None:
        if self._live is not None:
            self._live.update(progress_table(p), refresh=True)
        else:
            self.stream.write(progress_line(p) + "\n")
            self.stream.flush()
