"""Entry point of the ``edgefrac`` console script and of ``python -m edgefrac``.

Loading the commands imports click, numpy, Pillow and every command module,
and a Ctrl-C can arrive during those imports. This module imports only what
it needs to report that, so ``main`` can catch the KeyboardInterrupt and exit
like ``edgefrac infer`` does when interrupted.

NOTE: a Ctrl-C before this module is imported (Python's start-up, the
console script's own imports) still ends with Python's traceback.
"""

from __future__ import annotations

import sys

from edgefrac.exitcodes import ExitCode

INTERRUPTED_WHILE_LOADING = "interrupted: stopped while loading edgefrac, before the command started"


def main() -> None:
    """Load the command group and run it. A Ctrl-C while loading exits 130 with one line on stderr."""
    try:
        from edgefrac.cli import main as command_group
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED_WHILE_LOADING + "\n")
        sys.exit(ExitCode.INTERRUPTED)
    command_group()


if __name__ == "__main__":
    main()
