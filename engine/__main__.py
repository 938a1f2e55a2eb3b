"""`python -m engine ...`: the `engine` command, for when the venv's bin/ is not on PATH."""

from .cli import main

main(prog_name="engine")
