"""Start-up time of the ``radio`` command for answers that need no model.

``radio --help``, ``radio versions`` and an argument error must not import torch or timm (the target
is well under 1 s even on a busy 2-core machine). Each case runs in a fresh interpreter
(``python -m radio ...``, as the installed ``radio`` script does) and the median of ``--repeat``
runs is reported, next to ``python -c "import torch, timm"`` for contrast and a bare interpreter
for the floor.

Usage::

    python benchmarks/cli_startup.py              # median of 3 runs per case
    python benchmarks/cli_startup.py --repeat 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]

CASES: Dict[str, List[str]] = {
    "radio --help": ["-m", "radio", "--help"],
    "radio versions": ["-m", "radio", "versions"],
    "radio extract (argument error)": ["-m", "radio", "extract", "img.png", "--no-such-flag"],
    "radio extract (unknown --version)": ["-m", "radio", "extract", "img.png", "--version", "no-such-version"],
    "python -c 'import torch, timm'": ["-c", "import torch, timm"],
    "python -c 'pass' (interpreter)": ["-c", "pass"],
}


def _time(args: Sequence[str], repeat: int) -> List[float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] = None) -> Dict[str, float]:
    """Time every case; print a table and return ``{case: median seconds}``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per case (default: 3)")
    args = p.parse_args(argv)
    medians = {name: statistics.median(_time(cmd, args.repeat)) for name, cmd in CASES.items()}
    heavy = medians["python -c 'import torch, timm'"]
    print(f"{'case':<36} {'median':>8}  vs import torch, timm  (median of {args.repeat}, {os.cpu_count()} CPUs)")
    for name, t in medians.items():
        print(f"{name:<36} {t:>7.3f}s  {t / heavy:>6.3f}x")
    return medians


if __name__ == "__main__":
    main()
