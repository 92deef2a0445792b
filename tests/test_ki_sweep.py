"""A KeyboardInterrupt at every line of greenbridge's plumbing: a ``sys.settrace`` sweep.

The sweep itself (the program, the injection, the checks) is ``tests/_ki_sweep.py``; it runs in
a process of its own, where counting the live fibers and greenlets after each of its hundreds of
runs is cheap and no other test's signal handler or heap gets in the way. The suite interrupts
every 5th line event (``GREENBRIDGE_KI_STRIDE``, default 5, or 1 under the ``long`` hypothesis
profile: every line event; how many: see ``_ki_sweep``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _reliability import profile_name


@pytest.mark.timeout(600)
def test_an_interrupt_at_every_line_of_the_plumbing_ends_gb_run_cleanly(gb_backend: str) -> None:
    default = "1" if profile_name() == "long" else "5"
    stride = os.environ.get("GREENBRIDGE_KI_STRIDE", default)
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, str(here / "_ki_sweep.py"), gb_backend, stride],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=here,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["total"] > 200  # the program does cross the plumbing
    assert report["swept"] >= report["total"] // int(stride)
    failures = report["failures"]
    assert not failures, f"{len(failures)} of {report['swept']} points failed:\n" + "\n".join(failures[:10])
