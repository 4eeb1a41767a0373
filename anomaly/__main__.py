"""The ``anomaly`` command (and ``python -m anomaly``). Importing the command line loads torch and pandas, which
takes a second or two; Ctrl-C in that time ends as it does later (``error: aborted``, status 1), not with
a traceback of whatever module was being imported."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from anomaly.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\nerror: aborted\n")
        sys.exit(1)
    main()


if __name__ == "__main__":
    run()
