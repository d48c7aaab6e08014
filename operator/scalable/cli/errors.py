"""How the CLI reports a user mistake: one readable line on stderr and exit code 2."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

USAGE_ERROR = 2
SYSTEM_ERROR = 1

err_console = Console(stderr=True)


def fail(message: str, code: int = USAGE_ERROR) -> "typer.Exit":
    """Print ``message`` as one unwrapped error line and return the Exit to raise.

    Never wrapped: paths make long lines, and scripts reading stderr grep for one line.
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
