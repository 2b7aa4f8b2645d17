"""Run a multi-process Lightning script in a child Python process (for DDP tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(source: str, folder: Path, *args: str, timeout: float = 300) -> None:
    """Write ``source`` to ``folder`` and run it there with ``folder`` and ``args`` as argv.

    Lightning launches the other DDP ranks by running the same script again, so the
    script must be a file. The child sees this checkout on ``PYTHONPATH`` and
    ``HF_HUB_OFFLINE=1``.

    Args:
        source: The script's Python source.
        folder: Working folder; the script gets it as its first argument.
        *args: Further arguments.
        timeout: Seconds before the child is killed.

    Raises:
        AssertionError: If the script exits with a non-zero status (with its stderr tail).
    """
    script = folder / "script.py"
    script.write_text(source)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
