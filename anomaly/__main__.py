"""The ``anomaly`` command (and ``python -m anomaly``). Importing the command line loads torch and pandas, which
takes a second or two; Ctrl-C in that time ends as it does later (``error: aborted``, status 1), not with
a traceback of whatever module was being imported."""

from __future__ import annotations

import signal
import sys


def run() -> None:
    try:
        from anomaly.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\nerror: aborted\n")
        sys.exit(1)
    try:
        main()
    finally:
        # The command is over, its outputs complete and its status chosen. A Ctrl-C while the interpreter shut
        # down (torch's teardown takes a moment) killed it by SIGINT, status 130 and no line, after a promotion
        # had printed its decision, or raised in an exit handler with a traceback. SIGTERM still ends it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    run()
