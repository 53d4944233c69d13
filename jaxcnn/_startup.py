"""Ctrl-C while the command line starts.

The ``jaxcnn`` script and ``python -m jaxcnn`` import jax for seconds before
:func:`jaxcnn.cli.main` runs, and Python drops a KeyboardInterrupt raised inside a GC callback.
So, for the command line only, this module (imported first by ``jaxcnn/__init__``) installs a
SIGINT handler that exits at once with one line and status 130; ``main`` restores the default
handler once the command runs. ``--debug`` keeps Python's default.
"""

from __future__ import annotations

import os
import signal
import sys


def interrupted_while_starting(signum: int, frame: object) -> None:
    os.write(2, b"jaxcnn: interrupted\n")
    os._exit(130)


if (os.path.basename(sys.argv[0]) in ("jaxcnn", "-m") and "--debug" not in sys.argv
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, interrupted_while_starting)
