"""Output meant for people: tables that keep their width when the output goes to a file or a pipe."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 100_000  # a table written to a file takes the width it needs (rich would cut it to 80 columns)


def table_console() -> Console:
    """The terminal's console, or, when stdout is not a terminal, one that never narrows a table."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)
