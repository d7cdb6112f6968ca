"""Two processes under ``jax.distributed`` (loopback, gloo CPU collectives) train bit-identically.

Each process owns two CPU devices and runs ``examples/train_distributed.py multihost``, the
README's multi-host example, through several mask updates. Each then hashes its *own* copies of
the masks, params, optimizer state, step and key on the host; the hashes must be equal.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_distributed.py"
TIME_LIMIT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_two_processes_hold_bit_identical_masks_params_and_optimizer_state(method, tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # the script sets its own
    # Logs go to files, not pipes: a worker blocked on a full pipe would stall the other in a collective.
    logs = [tmp_path / f"process_{rank}.log" for rank in range(2)]
    with contextlib.ExitStack() as files:
        workers = [
            subprocess.Popen(
                [sys.executable, str(EXAMPLE), "multihost", "--method", method, "--coordinator", coordinator]
                + ["--num-processes", "2", "--process-id", str(rank), "--devices", "2"]
                + ["--steps", "12", "--update-every", "3", "--out", str(tmp_path / f"process_{rank}.json")],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=files.enter_context(log.open("w")),
                start_new_session=True,  # its own process group, so cleanup reaches everything it started
            )
            for rank, log in enumerate(logs)
        ]
        try:
            for worker in workers:
                worker.wait(timeout=TIME_LIMIT_S)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log.read_text()[-3000:]
    results = [json.loads((tmp_path / f"process_{rank}.json").read_text()) for rank in range(2)]
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["devices"] == 4 for r in results)  # 2 processes x 2 devices form one mesh
    assert abs(results[0]["sparsity"] - 0.9) < 1e-3
    # update_every=3 and end_step=0.75*12=9: the masks were updated several times on the way
    assert results[0]["sha256"] == results[1]["sha256"]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
