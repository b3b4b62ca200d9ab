"""Runs the shared conformance checker (reference outputs of the original implementation) when
``../shared/conformance`` sits beside the repository, as it does in CI."""

import os
import subprocess
import sys
from pathlib import Path


from radio_test_utils import SHARED, require_shared

ROOT = Path(__file__).resolve().parents[1]
CHECKER = SHARED / "conformance" / "check.py"


def test_conformance_sample_passes():
    require_shared(CHECKER)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(CHECKER), "--project", str(ROOT), "--cases", str(CHECKER.parent / "cases")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    lines = proc.stdout.strip().splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failures, "\n".join(failures or lines[-5:]) + proc.stderr[-2000:]
    assert lines[-1].endswith(" 0 failed") and not lines[-1].startswith("0 passed")
