"""The ``embedmig`` command: parses, calls :mod:`embedmig.command`, prints.

This is the one place where errors become messages: an EmbedmigError prints one line on stderr and
exits non-zero (1, 3 for a failed gate, 4 while a canary holds the swap); ``--verbose`` adds the
traceback. The commands live by subject: ``cli.migrate`` (init, revision, upgrade and the other
commands that change an alias), ``cli.inspect`` (what is recorded and served), ``cli.monitor``
(the checks after the swap).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from embedmig.config import Config, sample_size
from embedmig.errors import (
    CanaryOpen,
    ContractBroken,
    EmbedmigError,
    GateFailed,
    HistoryError,
)

if TYPE_CHECKING:
    from embedmig.metrics.report import Report

EXIT_ERROR, EXIT_GATE, EXIT_CANARY = 1, 3, 4


class SampleSize(click.ParamType):  # type: ignore[type-arg]  # generic only in newer Click
    """``1000`` (documents) or ``10%`` (a share of the corpus, as a float); a bad value is a
    ConfigError (exit 1) with the rule, as the Python API gives it."""

    name = "N|P%"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | float:
        return sample_size(value)


SAMPLE = SampleSize()


def command_module() -> ModuleType:
    """``embedmig.command``, loaded by the command that runs: ``--help`` needs none of it."""
    from embedmig import command

    return command


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, not to the one at configuration: a
    program calling ``main`` repeatedly (tests capturing output) may have replaced it since."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class State:
    def __init__(self) -> None:
        self.verbose = False
        self.bars = False  # progress bars: on a terminal, without -q
        self.config_path: str | None = None

    def config(self) -> Config:
        return Config(self.config_path) if self.config_path else Config.find()


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", help="embedmig.ini or pyproject.toml to use.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors.")
@click.version_option(package_name="embedmig")
@pass_state
def cli(state: State, config_path: str | None, verbose: bool, quiet: bool) -> None:
    """Versioned, reversible migrations of the embedding model behind a FAISS index."""
    state.verbose = verbose
    state.config_path = config_path
    state.bars = not quiet and sys.stderr.isatty()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("embedmig: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if not verbose:
        for noisy in (
            "sentence_transformers",
            "transformers",
            "huggingface_hub",
            "alembic",
            "faiss",
            "httpx",  # a line per request
            "httpcore",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING if not quiet else logging.ERROR)


def print_report(report: Report) -> None:
    from embedmig.render import render

    click.echo(render(report, styled=True))


def report_output(function: Callable[..., None]) -> Callable[..., None]:
    """``-o FILE`` and ``--format``, for the commands that show a report."""
    function = click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json", "html"]),
        default="text",
        show_default=True,
    )(function)
    return click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False),
        help="Write to a file: .json, .html or text.",
    )(function)


def show_report(found: Report, output: str | None, fmt: str) -> None:
    if output is not None:
        command_module().write_report(found, Path(output))
        click.echo(f"wrote {output}")
    else:
        from embedmig.render import render

        click.echo(render(found, fmt, styled=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the one error boundary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    state = State()
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="embedmig",  # not "python -c" or a test runner's name
            obj=state,
            standalone_mode=False,
        )
    except (GateFailed, ContractBroken) as exc:
        return _fail(state, exc, EXIT_GATE)
    except CanaryOpen as exc:  # not a failure: the swap waits for live traffic
        click.echo(f"embedmig: {exc}", err=True)
        return EXIT_CANARY
    except EmbedmigError as exc:
        return _fail(state, exc, EXIT_ERROR)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    except OSError as exc:
        return _fail(state, exc, EXIT_ERROR)
    except Exception as exc:
        # A database failing mid-command (read-only, full, gone); no SQLAlchemy loaded, no such.
        sa = sys.modules.get("sqlalchemy")
        if sa is None or not isinstance(exc, sa.exc.DBAPIError):
            raise
        from embedmig.history import db

        return _fail(state, HistoryError(f"history database error: {db.reason(exc)}"), EXIT_ERROR)
    return 0


def _fail(state: State, exc: BaseException, code: int) -> int:
    if state.verbose:
        traceback.print_exception(exc)
    message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    click.echo(f"embedmig: error: {message}", err=True)
    return code


def run() -> None:
    sys.exit(main())


# The commands register themselves on ``cli`` as their modules load.
from embedmig.cli import inspect, migrate, monitor  # noqa: E402, F401
