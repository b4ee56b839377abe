"""`python -m lmaas` runs the `lmaas` command."""

from lmaas.cli import main

main()
