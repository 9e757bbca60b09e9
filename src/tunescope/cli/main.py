"""Entry point: builds the typer app from the subcommand modules and turns every failure into one line.

This is the error-translation boundary of the command line. A :class:`TunescopeError` (bad input, a
damaged file named with its fix) prints ``error: ...`` and exits with 2; a usage error is click's message
in one line and 2; an :class:`OSError` that no reader translated (disk full, permission denied) prints
the file and the reason and exits with 2, as does, as a last resort, an exception a library raises on a
damaged file that no reader named; Ctrl-C prints that completed work is kept and exits with 130.
``TUNESCOPE_TRACEBACK=1`` shows the traceback of the last two kinds. Only a bug ends in a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from tunescope.cli import (
    analyze,
    compare,
    compress,
    extract,
    finetune,
    heads,
    info,
    probe,
    report,
    tasks,
    truncate,
    variability,
)
from tunescope.errors import TunescopeError

app = typer.Typer(
    name="tunescope",
    help="See what fine-tuning did inside a transformer encoder, layer by layer and head by head.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (info, tasks, extract, compare, finetune, analyze, report, variability):
    module.register(app)
truncate.register(app)
compress.register(app)
heads.register(app)
probe.register(app)

INTERRUPTED = "interrupted: completed work is kept; rerun the same command to resume"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 success, 2 bad input, 130 interrupted)."""
    _setup_logging()
    _quiet_transformers()
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        # click's own main() would catch Ctrl-C and print a bare newline; run the command ourselves
        with command.make_context("tunescope", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    except typer.TyperException as err:  # usage errors (bad option, missing argument): exit code 2
        print(f"error: {_usage_line(err)}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except typer.Abort:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except TunescopeError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except OSError as err:  # an environment problem no reader turned into a TunescopeError
        if os.environ.get("TUNESCOPE_TRACEBACK"):
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"error: {where}{err.strerror or err}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 2
    except _unreadable() as err:  # a damaged file that no reader named (each reader should): last resort
        if os.environ.get("TUNESCOPE_TRACEBACK"):
            raise
        print(
            f"error: a file could not be read ({type(err).__name__}: {_one_line(str(err))[:200]}); check "
            "the files and folders you passed (TUNESCOPE_TRACEBACK=1 shows where it was read)",
            file=sys.stderr,
        )
        return 2
    return 0


def _unreadable() -> tuple[type[BaseException], ...]:
    """What the libraries we use raise on a damaged file (each reader in tunescope translates its own)."""
    import csv
    import json
    import pickle
    import zlib

    from safetensors import SafetensorError

    return (
        SafetensorError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        csv.Error,
        pickle.UnpicklingError,
        EOFError,
        zlib.error,
    )


def _usage_line(err: Exception) -> str:
    """click's message for a usage error, in one line, pointing at the subcommand's help."""
    format_message = getattr(err, "format_message", None)
    message = _one_line(format_message() if callable(format_message) else str(err))
    ctx = getattr(err, "ctx", None)
    path = getattr(ctx, "command_path", None)
    return f"{message} (see `{path} --help`)" if path else message


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = _one_line(record.getMessage())
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def _setup_logging() -> None:
    """tunescope's notices (resuming, recomputing a damaged file) on stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    level = os.environ.get("TUNESCOPE_LOG", "INFO").upper()
    own = logging.getLogger("tunescope")
    own.handlers[:] = [handler]
    own.setLevel(level)
    own.propagate = False
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.propagate = False


def _quiet_transformers() -> None:
    """Keep stderr to tunescope's own progress bars (the CLI may set this; the library never does).

    Through the environment, which transformers and huggingface_hub read when first imported, so that a
    command that never loads a model (``--help``, ``tasks``) does not pay for importing them.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (a test, or a caller of main())
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
