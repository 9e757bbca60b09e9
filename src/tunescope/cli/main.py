"""Entry point: builds the typer app from the subcommand modules and turns errors into exit code 2."""

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
probe.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`TunescopeError` prints one line on stderr and exits with its code (2)."""
    logging.basicConfig(level=os.environ.get("TUNESCOPE_LOG", "WARNING"), format="%(levelname)s %(message)s")
    _quiet_transformers()
    try:
        app(args=argv, standalone_mode=True)  # click prints usage errors itself and exits with 2
    except TunescopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed work is cached; rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


def _quiet_transformers() -> None:
    """Keep stderr to tunescope's own progress bars (the CLI may set this; the library never does)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
