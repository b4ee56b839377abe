"""`python -m lmaas_operator` / `lmaas-operator`: run the operator over every namespace."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    from kopf.cli import main as kopf_main

    args = sys.argv[1:] or ["--all-namespaces"]
    sys.argv = ["kopf", "run", "-m", "lmaas_operator.handlers", *args]
    kopf_main()


if __name__ == "__main__":
    main()
