"""``python -m isoflop`` runs the CLI."""

from isoflop.cli import main

main()
