"""The suite's hang watchdog (tests/conftest.py): a test stuck where pytest-timeout cannot reach ends the run
with every thread's stack, naming the stuck test, instead of hanging CI."""
from __future__ import annotations

import os
import subprocess
import sys
import time

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_a_stuck_test_ends_the_run_with_its_stack(tmp_path):
    # faulthandler.dump_traceback_later's C thread fires even while the main thread is in C code; a sleep
    # plays the stuck call (pytest-timeout is switched off so that only the watchdog can end it)
    (tmp_path / "test_stuck.py").write_text("import time\n\ndef test_stuck_in_c():\n    time.sleep(60)\n")
    env = dict(os.environ, IDSCULPT_HANG_WATCHDOG_S="2", PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "--timeout=0",
                          "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_stuck.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 50
    assert run.returncode != 0
    assert "Timeout (0:00:02)!" in run.stderr and 'test_stuck.py", line 4 in test_stuck_in_c' in run.stderr
