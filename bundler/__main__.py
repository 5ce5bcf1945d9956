"""`python -m bundler` is the `thread-bundler` command."""

from .cli import main

main(prog_name="thread-bundler")
