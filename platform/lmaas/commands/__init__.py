"""Sub-commands of `lmaas`, one module per group; `lmaas.cli` registers them.

Modules here import only typer/rich at import time; everything heavy is imported inside the
command functions, so `lmaas --help` stays fast.
"""
