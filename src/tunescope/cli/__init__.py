"""The ``tunescope`` command line: a thin typer shell over the public API (one module per subcommand)."""
