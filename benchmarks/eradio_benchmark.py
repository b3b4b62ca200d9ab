"""E-RADIO forward speed: ``radio.eradio.ERadioBackbone`` (eval, BatchNorm folded, cached position
bias, fused attention) against an emulation of the original's way of computing (explicit BatchNorm,
position-bias MLP evaluated on every call, explicit attention matrices), i.e.
``tests/eradio_reference.py``, on the same random weights written by ``tests/eradio_writer.py``.

Run from the repository root::

    python benchmarks/eradio_benchmark.py                 # eradio (e-radio_v2's architecture)
    python benchmarks/eradio_benchmark.py --model eradio_xxxtiny --size 256

One warm-up call per implementation at a small size (it fills the fold/bias caches, which persist
across input sizes), then ``--repeats`` rounds of timed calls at ``--size`` (default 512x512,
batch 4, float32), the two implementations alternating; the best time of each is reported. Prints the times, the speed ratio and the relative error between the two outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the package and the test writers, run from anywhere

from eradio_reference import reference_forward  # noqa: E402
from eradio_writer import make_eradio_checkpoint  # noqa: E402

from radio.eradio import ERadioBackbone, eradio_spec, filter_checkpoint_state_dict  # noqa: E402


def _time_interleaved(fns: Sequence[Callable[[], torch.Tensor]],
                      repeats: int) -> Tuple[List[float], List[torch.Tensor]]:
    """Best time and last output of each function, alternating them (fairer on a shared CPU)."""
    times: List[List[float]] = [[] for _ in fns]
    outs: List[torch.Tensor] = [torch.empty(0) for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return [min(t) for t in times], outs


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='eradio', help='registered E-RADIO name')
    p.add_argument('--size', type=int, default=512, help='square input side (multiple of 32)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--repeats', type=int, default=1, help='timed runs (the minimum is reported)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave the default)')
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    written = make_eradio_checkpoint(None, args.model, seed=0)
    weights = {k: v.to(dev) for k, v in written.backbone.items()}
    spec = eradio_spec(written.args.model, written.args.model_kwargs)
    with torch.device('meta'):
        model = ERadioBackbone(spec)
    model.load_state_dict(filter_checkpoint_state_dict(weights)[0], assign=True)
    model.eval()

    x = torch.randn(args.batch, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(0)).to(dev)
    warm = x[:1, :, :64, :64]
    with torch.no_grad():
        model(warm)
        reference_forward(weights, warm)

        def sync() -> None:
            if dev.type == 'cuda':
                torch.cuda.synchronize()

        def run_ref() -> torch.Tensor:
            y = reference_forward(weights, x).neck
            sync()
            return y

        def run_new() -> torch.Tensor:
            y = model(x)
            sync()
            return y

        (t_ref, t_new), (y_ref, y_new) = _time_interleaved([run_ref, run_new], args.repeats)
    err = ((y_new.double() - y_ref.double()).norm() / y_ref.double().norm()).item()
    max_rel = ((y_new - y_ref).abs().max() / y_ref.abs().max()).item()
    print(f'model={spec.name} input={args.batch}x3x{args.size}x{args.size} float32 '
          f'device={dev} threads={torch.get_num_threads()}')
    print(f'original-way emulation: {t_ref:.3f} s')
    print(f'ERadioBackbone (eval):  {t_new:.3f} s')
    print(f'speed-up: {t_ref / t_new:.2f}x')
    print(f'relative error (L2): {err:.2e}; max abs diff / max abs: {max_rel:.2e}')


if __name__ == '__main__':
    main()
