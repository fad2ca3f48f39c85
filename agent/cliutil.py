"""What `edge-agent` and `edge-deploy` share: logging set-up and the error contract.

Bad input (any EdgeloopError) prints one line on stderr, `PROG: error: MESSAGE (hint: ...)`,
and exits 2, never a traceback; Ctrl-C exits 130; a closed pipe (`... --json | head`) is not an
error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from agent.errors import EdgeloopError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set the log level from ``-v``, call ``args.func(args)``."""
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except EdgeloopError as exc:
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        print(f"{parser.prog}: error: {exc.message}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away: not an error
        sys.stderr.close()
        return EXIT_OK
