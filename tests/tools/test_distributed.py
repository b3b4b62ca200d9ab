"""The torchrun helper: environment parsing, device checks, and a real 2-process gloo group (fork)."""

import multiprocessing
import os
import socket

import pytest
import torch

from radio.tools.distributed import (DeviceError, TorchrunEnv, distributed_context, rank_zero_first, resolve_device,
                                     torchrun_env)


def test_torchrun_env():
    assert torchrun_env({}) == TorchrunEnv(0, 1, 0)
    assert torchrun_env({"WORLD_SIZE": "1", "RANK": "0"}) == TorchrunEnv(0, 1, 0)
    env = torchrun_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert env == TorchrunEnv(3, 4, 1) and env.distributed
    with pytest.raises(ValueError, match="WORLD_SIZE='x' is not an integer"):
        torchrun_env({"WORLD_SIZE": "x"})
    with pytest.raises(ValueError, match=r"RANK=4 is outside \[0, WORLD_SIZE=4\)"):
        torchrun_env({"WORLD_SIZE": "4", "RANK": "4"})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    with pytest.raises(DeviceError, match="Unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(DeviceError, match="'meta' device holds no data"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="Device 'cuda:1' is not available.*use 'cpu'"):
            resolve_device("cuda:1")
    else:
        assert resolve_device("cuda", local_rank=0, distributed=True) == torch.device("cuda", 0)
        n = torch.cuda.device_count()
        with pytest.raises(DeviceError, match=f"has {n} CUDA device"):
            resolve_device(f"cuda:{n}")


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_context("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
        assert ctx.all_gather_object({"a": 1}) == [{"a": 1}]
        ctx.barrier()
        assert not torch.distributed.is_initialized()
    with pytest.raises(DeviceError):
        with distributed_context("nope"):
            pass


def _worker(rank, world, port, log, queue):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        with distributed_context("cpu") as ctx:
            with rank_zero_first(ctx):
                with open(log, "a") as f:
                    f.write(f"{ctx.rank}\n")
            gathered = ctx.all_gather_object(ctx.rank * 10)
            queue.put((ctx.rank, ctx.world_size, gathered, torch.distributed.is_initialized()))
        queue.put(("after", rank, torch.distributed.is_initialized()))
    except Exception as e:  # reported to the test instead of hanging it
        queue.put(("error", rank, repr(e)))


def test_two_processes_join_gather_and_leave(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")  # inherits the imported torch: no second start-up
    queue = ctx.Queue()
    log = tmp_path / "order.txt"
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(log), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
    assert not [r for r in results if r[0] == "error"], results
    inside = sorted(r for r in results if r[0] != "after")
    assert inside == [(0, 2, [0, 10], True), (1, 2, [0, 10], True)]
    assert sorted(r for r in results if r[0] == "after") == [("after", 0, False), ("after", 1, False)]
    assert log.read_text().split() == ["0", "1"]  # rank 0 ran the block first
