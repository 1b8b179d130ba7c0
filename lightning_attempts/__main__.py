"""``python -m lightning_attempts`` runs the command line."""

from .cli import main

main()
