"""The ``measured`` stamp of a result file in bench/results (date, commit, note), without torch (bench_pipeline.py,
the ComfyUI client, does not import it)."""
from __future__ import annotations

import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    """The commit a result describes: ``IDSCULPT_COMMIT`` where set, else the checkout's HEAD. The GPU machine gets a
    copy of the working tree whose ``.git`` can be older than the files (a run there stamped 62308aa for 799ac63's
    code), so device commands set ``IDSCULPT_COMMIT`` to the commit they were sent from."""
    env = os.environ.get("IDSCULPT_COMMIT", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measured(note: str = "") -> dict:
    """The ``measured`` stamp of a result file: date, commit, a note."""
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "note": note}
