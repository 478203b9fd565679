"""The command line: Typer lives here and nowhere else."""
