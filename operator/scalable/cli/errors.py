"""How the CLI reports a user mistake: one readable line on stderr and exit code 2."""

from __future__ import annotations

import typer
from rich.console import Console

USAGE_ERROR = 2
SYSTEM_ERROR = 1

err_console = Console(stderr=True)


def fail(message: str, code: int = USAGE_ERROR) -> "typer.Exit":
    """Print ``message`` as an error and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
