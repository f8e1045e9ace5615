"""``bmgkd`` command line: ``train``, ``distill``, ``preflight``, ``eval`` and ``validate``.

Thin adapters over the library. This module assembles the parser, runs the chosen command and maps
errors to exit codes; the commands live in ``cli_run`` (``train``, ``distill``) and ``cli_tools``
(``preflight``, ``eval``, ``validate``), the progress bar and exit codes in ``cli_console``.

Exit codes: 0 success, 1 training diverged or failed, 2 bad input (the message names the problem;
no traceback), 130 interrupted (a resume checkpoint is written first when training).

Plugin commands: other installed distributions add sub-commands through the entry-point group
``bmgkd.commands``, e.g. in their ``pyproject.toml``::

    [project.entry-points."bmgkd.commands"]
    jobs = "some_package.cli:register"

Each entry point is a callable ``register(subparsers) -> None`` that adds its sub-parser(s) to the
``argparse`` sub-parsers action and sets ``handler`` on each (``parser.set_defaults(handler=fn)``,
``fn(args: argparse.Namespace) -> int`` returning the exit code). Handlers may raise
``bmgkd_core.errors`` exceptions (and pydantic ``ValidationError``); they map to exit codes as
above. This is how the job service adds ``bmgkd submit``, ``bmgkd jobs`` etc. while the engine
never imports service code. The core commands are registered first, so a plugin cannot replace
one. A plugin that fails to load or to register is skipped with a warning naming its entry point;
the core commands keep working.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points

from pydantic import ValidationError

from bmgkd_core.cli_console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConsoleCallback,
)
from bmgkd_core.cli_run import add_run_commands
from bmgkd_core.cli_tools import add_tool_commands
from bmgkd_core.errors import (
    BmgkdError,
    Cancelled,
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PLUGIN_GROUP",
    "ConsoleCallback",
    "main",
]

PLUGIN_GROUP = "bmgkd.commands"

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bmgkd`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.error(f"{args.command}: the command's plugin set no handler")
    try:
        code: int = args.handler(args)
        return code
    except (ConfigError, DataError, CheckpointError, ValidationError) as exc:
        print(f"bmgkd {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Cancelled as exc:
        print(f"bmgkd {args.command}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DivergenceError as exc:
        print(f"bmgkd {args.command}: training diverged: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BmgkdError as exc:
        print(f"bmgkd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmgkd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_commands(sub)
    add_tool_commands(sub)
    _add_plugin_commands(sub)
    return parser


def _command_entry_points() -> Sequence[EntryPoint]:
    """The installed entry points of :data:`PLUGIN_GROUP` (replaced in tests)."""
    return tuple(entry_points(group=PLUGIN_GROUP))


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Let each ``bmgkd.commands`` plugin register its sub-commands; skip broken ones."""
    for ep in _command_entry_points():
        try:
            register = ep.load()
            register(sub)
        except Exception as exc:  # a broken plugin must not take the core commands down
            logger.warning(
                "skipping command plugin %r (%s = %s): %s: %s",
                ep.name,
                PLUGIN_GROUP,
                ep.value,
                type(exc).__name__,
                exc,
            )


if __name__ == "__main__":
    sys.exit(main())
