"""The ``scalable`` command line.

Each command group lives in its own module and registers itself here. User mistakes end with
a one-line error and exit code 2; a failure of the system exits 1; success exits 0.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="scalable",
    help="Size and scale Dask workflows from their own telemetry.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

#: (module, attribute, name) of each command group; a group whose module is absent is left out
_GROUPS = [
    ("scalable.cli.telemetry", "app", "telemetry"),
    ("scalable.cli.advise", "register", None),
    ("scalable.cli.evaluate", "register", None),
    ("scalable.cli.session", "register", None),
    ("scalable.cli.operator", "app", "operator"),
]


def _register_groups() -> None:
    for module_name, attribute, name in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        target = getattr(module, attribute)
        if name is None:
            target(app)
        else:
            app.add_typer(target, name=name)




@app.callback()
def _root() -> None:
    """Size and scale Dask workflows from their own telemetry."""


@app.command()
def version() -> None:
    """Print the version of scalable."""
    from scalable import __version__

    typer.echo(__version__)


_register_groups()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
