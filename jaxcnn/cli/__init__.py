"""The ``jaxcnn`` command line.

Built-in commands (:data:`BUILTIN`) are modules of this package; each exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` (``args -> int``
exit status) as the parser's default. Other packages add commands the way pytest plugins
register: an entry point in the group :data:`ENTRY_POINT_GROUP` naming such a ``register``
function, e.g. in ``pyproject.toml``::

    [project.entry-points."jaxcnn.commands"]
    parity = "torch_ref.crosscheck.cli:register_parity"

A plugin whose import fails (the torch extra is not installed) is still listed; running it
prints one message saying how to install the extra, and exits 2.

:func:`main` is the one place expected failures become messages: a damaged or missing
checkpoint, bad data, a weights file that does not fit, an OS error (disk full, permission,
read-only file system, ...) and Ctrl-C each print one or two lines naming the path and the fix
and exit 2 (1 for OS errors, 130 for Ctrl-C). ``--debug`` (anywhere on the command line) or
``JAXCNN_DEBUG=1`` shows the full traceback instead.

:func:`entry` is the process entry (the ``jaxcnn`` script, ``python -m jaxcnn``): :func:`main`,
then the process ends without the interpreter's teardown (:func:`end_process`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from .options import TORCH_MISSING

BUILTIN = ("train", "eval", "export", "summary")
ENTRY_POINT_GROUP = "jaxcnn.commands"
# Listing order in --help; plugins not named here follow alphabetically.
_ORDER = (*BUILTIN, "parity", "compare", "bench")


def plugins(load: bool = True) -> dict[str, Callable[[Any], None] | ImportError | None]:
    """``{command: register function}`` of the installed entry points; the ImportError in place
    of the function when the plugin cannot be imported (its extra is missing); ``None`` for
    every plugin when ``load`` is False (their names only: importing them means importing
    torch, seconds that a built-in command should not pay)."""
    found: dict[str, Callable[[Any], None] | ImportError | None] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN or ep.name in found:
            continue
        if not load:
            found[ep.name] = None
            continue
        try:
            found[ep.name] = ep.load()
        except ImportError as e:
            found[ep.name] = e
    return found


def _unavailable(name: str, error: ImportError) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"jaxcnn {name} {TORCH_MISSING} ({error})", file=sys.stderr)
        return 2

    return run


def build_parser(load_plugins: bool = True) -> argparse.ArgumentParser:
    """The ``jaxcnn`` parser: the built-in commands, then the installed plugins (listed by name
    only, not importable through this parser, when ``load_plugins`` is False)."""
    parser = argparse.ArgumentParser(
        prog="jaxcnn",
        description="The CNNs of Dive into Deep Learning ch. 5 in JAX, checked against PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, Callable[[Any], None] | ImportError | None] = {
        name: importlib.import_module(f"{__name__}.{name}").register for name in BUILTIN}
    commands.update(plugins(load_plugins))
    order = sorted(commands, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in order:
        register = commands[name]
        if register is None:
            sub.add_parser(name, help="(plugin)", add_help=False)
        elif isinstance(register, ImportError):
            p = sub.add_parser(name, help=f"(unavailable: {TORCH_MISSING})", add_help=False,
                               prefix_chars="\0")  # takes any arguments: none are parsed
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_unavailable(name, register))
        else:
            register(sub)
    return parser


# Exceptions that carry a message for people (module, class), checked without importing.
_EXPECTED = (("jaxcnn.training._checkpoint", "CheckpointError"), ("jaxcnn.data._idx", "DataError"),
             ("jaxcnn.convert", "StateDictError"), ("jaxcnn.convert", "WeightsFileError"))

_OS_FIX = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space or choose another location",
    errno.EACCES: "choose a location you can write to",
    errno.EPERM: "choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "the path is a directory; give a file",
}


def _expected(e: BaseException) -> bool:
    for module, name in _EXPECTED:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(e, getattr(mod, name)):
            return True
    return False


def _os_message(e: OSError) -> str:
    where = f": {e.filename}" if e.filename else ""
    what = e.strerror or str(e)
    fix = _OS_FIX.get(e.errno or 0)
    return f"{what}{where}" + (f" ({fix})" if fix else "")


def _restore_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt again (``jaxcnn/__init__`` exits at once while the
    command line starts), for the commands' own messages."""
    import signal

    from .._startup import interrupted_while_starting

    if signal.getsignal(signal.SIGINT) is interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; see the module docstring for how failures are reported."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("JAXCNN_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), "")
    prog = f"jaxcnn {command}".strip()
    try:
        parser = build_parser(load_plugins=command not in BUILTIN)
        args = parser.parse_args(argv)
        _restore_sigint()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if _expected(e):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            print(f"{prog}: error: {_os_message(e)}\n(run with --debug for the traceback)",
                  file=sys.stderr)
            return 1
        raise


#: Set to ``0`` to end ``jaxcnn`` processes through the interpreter's normal teardown.
FAST_EXIT_ENV = "JAXCNN_FAST_EXIT"


def end_process(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's teardown once everything a command leaves
    behind has finished: the background compilations (and the program store's writes, which
    run in them), JAX's ordered effects, the logging handlers, stdout and stderr.

    The teardown cost 0.3 s at the end of every ``jaxcnn train`` on the 2-vCPU machine, most
    of it JAX's ``atexit`` clean-up, which destroys the XLA client and its caches. With several
    processes (``jax.distributed`` initialised: JAX's ``atexit`` also shuts the distributed
    runtime down) or with ``JAXCNN_FAST_EXIT=0`` the process exits normally (``sys.exit``)."""
    jax = sys.modules.get("jax")
    if (os.environ.get(FAST_EXIT_ENV, "1") == "0"
            or (jax is not None and jax.distributed.is_initialized())):
        sys.exit(code)
    programs = sys.modules.get("jaxcnn.training._programs")
    if programs is not None:
        programs.wait_all()
    if jax is not None:
        jax.effects_barrier()
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing reaches it
            stream.flush()
    os._exit(code)


def entry() -> NoReturn:
    """The process entry point: :func:`main`, then :func:`end_process`."""
    end_process(main())
