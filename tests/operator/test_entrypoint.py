"""`python -m lmaas_operator` runs kopf over the handlers package."""

from __future__ import annotations

import subprocess
import sys


def test_module_entry_point_is_kopf_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lmaas_operator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "kopf run" in result.stdout and "--all-namespaces" in result.stdout
