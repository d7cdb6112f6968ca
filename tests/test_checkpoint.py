"""Resuming: a run killed at any step, or in the middle of writing a checkpoint, finishes bit-identical.

The killed runs are real processes that die with ``os._exit`` (no cleanup, no ``finally``, like a
SIGKILL or a pre-empted machine): one when it reaches a chosen step, one after orbax has written
every file of a checkpoint but before it renames the checkpoint into place. Each is then resumed
here and compared bit for bit with a run that never stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxsparse.training import Checkpoints, Config, compilation_cache, train
from tests.helpers import leaf_bytes, without_wall_time

KILLED = 86  # the dying process's exit status, distinct from any failure's
# test_training's run (RigL on digits, masks updated every 5 steps up to step 30), evaluated every
# 5 steps and saved every 10, so kills at steps 17 and 20 fall between and on checkpoints and the
# masks keep changing after them. The same trajectory settings share compiled programs.
RUN = dict(dataset="digits", model="mlp", steps=40, batch_size=32, update_every=5, eval_every=5, checkpoint_every=10)
STEPS_LOGGED = list(range(5, 41, 5))

_DIE = textwrap.dedent(
    """
    import json, os, sys

    from jaxsparse.training import Config, compilation_cache, train

    how, at, settings, cache = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    if how == "step":
        # Die when the loop asks for the batch of step `at`, i.e. after `at` completed steps.
        import jaxsparse.training._loop as loop

        real_batches = loop.train_batches

        class Dying:
            def __init__(self, batches):
                self.batches = batches

            def __getitem__(self, step):
                if step == at:
                    os._exit({killed})
                return self.batches[step]

        loop.train_batches = lambda *args, **kwargs: Dying(real_batches(*args, **kwargs))
    else:
        # Die once orbax has written checkpoint `at` into its temporary folder, before the rename.
        from orbax.checkpoint._src.path import atomicity

        real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self):
            if self.get_final().name == str(at):
                os._exit({killed})
            await real_finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    with compilation_cache(cache):
        train(Config.from_dict(settings), progress=False)
    """
).format(killed=KILLED)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache") as folder:
        yield folder


def _killed_run(config: Config, how: str, at: int, cache) -> None:
    process = subprocess.run(
        [sys.executable, "-c", _DIE, how, str(at), json.dumps(config.to_dict()), str(cache)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        timeout=300,
    )
    assert process.returncode == KILLED, f"the run was not killed as planned:\n{process.stderr[-3000:]}"


def _assert_identical(resumed, reference) -> None:
    assert leaf_bytes(resumed.params) == leaf_bytes(reference.params)
    assert leaf_bytes(resumed.masks) == leaf_bytes(reference.masks)
    assert leaf_bytes(resumed.opt_state) == leaf_bytes(reference.opt_state)  # moments, masks, step and key
    # The log has every evaluation exactly once, with the same numbers (wall times aside).
    assert [row["step"] for row in resumed.metrics] == STEPS_LOGGED
    assert without_wall_time(resumed.metrics) == without_wall_time(reference.metrics)
    lines = (resumed.out_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == STEPS_LOGGED


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train(Config(**RUN, out_dir=str(tmp_path_factory.mktemp("reference"))), progress=False)


def test_reference_masks_change_after_the_kill_points(reference):
    """Guards the test itself: the resumed stretch must contain mask updates to be meaningful."""
    assert [row["mask_change"] > 0 for row in reference.metrics if row["step"] > 20] == [True, True, False, False]


def test_killed_between_checkpoints_resumes_bit_identical(reference, tmp_path, cache):
    config = Config(**RUN, out_dir=str(tmp_path))
    _killed_run(config, "step", 17, cache)
    with Checkpoints(tmp_path / "checkpoints", keep=3) as checkpoints:
        assert checkpoints.latest_step() == 10
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5, 10, 15]
    _assert_identical(train(config, resume=True, progress=False), reference)


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(reference, tmp_path, cache):
    config = Config(**RUN, out_dir=str(tmp_path))
    _killed_run(config, "checkpoint", 20, cache)
    unfinished = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("20.")]
    assert unfinished, "orbax left no partly written checkpoint 20: the kill came too early or too late"
    with Checkpoints(tmp_path / "checkpoints", keep=3) as checkpoints:
        assert checkpoints.latest_step() == 10
    assert not (tmp_path / "checkpoints" / "20").exists()
    _assert_identical(train(config, resume=True, progress=False), reference)
