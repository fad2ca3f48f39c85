#!/usr/bin/env python3
"""Capture the files edgeloop's hardware probe reads into a tree that tests can replay.

Run it on a board (as a normal user is fine; root is not needed):

    python3 tests/hwtrees/capture.py tests/hwtrees/my-board

It runs the same probe as ``edge-agent probe`` with a recorder switched on and copies exactly
the files the probe found (nothing else), then:

- device nodes (``/dev/apex_N``) and the ``vcgencmd`` binary become empty regular files
  (only their presence matters);
- the ``Serial`` line of /proc/cpuinfo is replaced by zeros (it identifies the board);
- ``vcgencmd get_throttled`` output, when vcgencmd runs here, goes to
  ``.captured/vcgencmd_get_throttled`` (the convention agent/thermal.py reads under a tree);
- ``.captured/info.txt`` records when, where (kernel) and how the tree was made.

Check the result with ``edge-agent probe --hw-root tests/hwtrees/my-board`` and send it in.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from agent.board import hardware, thermal

EMPTY_MARKERS = ("dev/", "usr/bin/vcgencmd")


def scrub(rel: str, data: bytes) -> bytes:
    if rel == "proc/cpuinfo":
        return re.sub(rb"^(Serial\s*:\s*)\S+", rb"\g<1>0000000000000000", data, flags=re.M)
    return data


def capture(root: Path, out: Path) -> list[str]:
    """Copy what the probe reads under ``root`` into ``out``; return the relative paths."""
    found: set[str] = set()
    hardware.detect(root, record=found)
    state = thermal.snapshot(root, record=found, runner=lambda argv: None)
    for rel in sorted(found):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith(EMPTY_MARKERS):
            dest.write_bytes(b"")
            continue
        dest.write_bytes(scrub(rel, (root / rel).read_bytes()))
    captured = out / ".captured"
    captured.mkdir(parents=True, exist_ok=True)
    if root.resolve() == Path("/"):
        text = thermal.run_command(["vcgencmd", "get_throttled"])
    else:  # re-capturing a tree keeps its recorded vcgencmd output
        source = root / thermal.CAPTURED_THROTTLED
        text = source.read_text() if source.is_file() else None
    if text is not None:
        (out / thermal.CAPTURED_THROTTLED).write_text(text)
    # timezone.utc, not datetime.UTC: boards with Python 3.9 (Raspberry Pi OS Bullseye) run this.
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017
    (captured / "info.txt").write_text(
        f"captured: {now.isoformat(timespec='seconds')}\n"
        f"root: {root}\nkernel: {platform.release()}\nmachine: {platform.machine()}\n"
        f"tool: tests/hwtrees/capture.py\ntemp_c at capture: {state.temp_c}\n"
    )
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the tree into")
    parser.add_argument("--root", type=Path, default=Path("/"), help="what to capture (/)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty directory")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        print(f"{args.out} is not empty (use --force to overwrite)", file=sys.stderr)
        return 2
    files = capture(args.root, args.out)
    print(f"captured {len(files)} files into {args.out}")
    print(f"class: {hardware.detect(args.out).hardware_class()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
