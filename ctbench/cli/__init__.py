"""The Typer command-line app; one module per command group, heavy imports inside commands."""
