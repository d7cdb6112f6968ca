"""Damaged checkpoints are found, named and never resumed from; ``--resume`` says where it starts.

One finished run keeps a checkpoint every 4 steps, and its eight newest are each damaged in a way a
disk, a copy, a person or a killed process can: 400 flipped bytes in the largest array file (same
size, which orbax alone restores silently, with Adam moments of 1e38), a missing file list, a
truncated or deleted array file, deleted metadata, and each item missing. The resumed run must
name every damaged checkpoint and the reason, resume from the newest intact one and finish
bit-identical to the run that was never damaged. With no intact checkpoint left it must refuse,
naming each one and the fix. A checkpoint that rots as it is written must not cost the older ones.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from jaxsparse.training import Checkpoints, Config, ConfigError, TrainResult, compilation_cache, main, train
from tests.helpers import leaf_bytes, without_wall_time

# test_training's run (same trajectory settings, so the compiled programs come from the cache),
# checkpointed at steps 4, 8, ..., 40 and keeping all ten.
RUN = dict(dataset="digits", model="mlp", steps=40, batch_size=32, update_every=5, eval_every=10)
STEPS = list(range(4, 41, 4))


@pytest.fixture(scope="module", autouse=True)
def _shared_compilations(tmp_path_factory):
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache"):
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> TrainResult:
    """The undamaged run every resumed one must match."""
    config = Config(**RUN, checkpoint_every=4, keep_checkpoints=10, out_dir=str(tmp_path_factory.mktemp("run")))
    return train(config, progress=False)


def _copy(run: TrainResult, tmp_path: Path) -> Config:
    shutil.copytree(run.out_dir, tmp_path / "run")
    return run.config.replace(out_dir=str(tmp_path / "run"))


def _largest_array_file(checkpoint: Path) -> Path:
    """The biggest of the files that hold the arrays' bytes (OCDBT data files sit in ``d/`` folders)."""
    return max((p for p in (checkpoint / "state").rglob("*") if p.parent.name == "d"), key=lambda p: p.stat().st_size)


def _flip_bytes(checkpoint: Path) -> None:
    file = _largest_array_file(checkpoint)
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(byte ^ 0xFF for byte in data[middle : middle + 400])
    file.write_bytes(bytes(data))


def _delete_file_list(checkpoint: Path) -> None:
    """As a checkpoint whose writer was killed after orbax's rename, before the file list."""
    (checkpoint / "files.json").unlink()


def _truncate_file(checkpoint: Path) -> None:
    file = _largest_array_file(checkpoint)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _delete_file(checkpoint: Path) -> None:
    _largest_array_file(checkpoint).unlink()


def _delete_metadata(checkpoint: Path) -> None:
    (checkpoint / "state" / "_METADATA").unlink()


def _delete_item(name: str) -> Callable[[Path], None]:
    def delete(checkpoint: Path) -> None:
        shutil.rmtree(checkpoint / name)

    delete.__name__ = f"_delete_item_{name}"
    return delete


# The damage done to each checkpoint, and what the report must say.
DAMAGES = {
    40: (_flip_bytes, r"the bytes of its file state/\S+ changed since it was written \(it fails its checksum\)"),
    36: (_delete_file_list, r"it has no file list \(files.json\): the process that wrote it stopped, .*"),
    32: (_truncate_file, r"its file state/\S+ has \d+ bytes, \d+ when written"),
    28: (_delete_file, r"its file state/\S+ is missing"),
    24: (_delete_metadata, r"its file state/_METADATA is missing"),
    20: (_delete_item("state"), r"its item 'state' is missing"),
    16: (_delete_item("record"), r"its item 'record' is missing"),
    12: (_delete_item("digests"), r"its item 'digests' is missing"),
}


def test_damaged_checkpoints_are_named_and_the_run_resumes_from_the_newest_intact_one(run, tmp_path, capsys):
    config = _copy(run, tmp_path).replace(keep_checkpoints=3)
    folder = tmp_path / "run" / "checkpoints"
    for step, (damage, _) in DAMAGES.items():
        damage(folder / str(step))
    resumed = train(config, resume=True, progress=False)
    *damaged, resuming = capsys.readouterr().err.splitlines()
    for line, (step, (damage, reason)) in zip(damaged, DAMAGES.items(), strict=True):
        path, aside = re.escape(str(folder / str(step))), re.escape(str(folder / "damaged" / str(step)))
        assert re.fullmatch(rf"checkpoint at step {step} \({path}\) is damaged: {reason}; moved it to {aside}", line), (
            damage.__name__,
            line,
        )
    assert resuming == f"resuming from step 8 (checkpoint {folder / '8'})"
    assert leaf_bytes(resumed.params) == leaf_bytes(run.params)
    assert leaf_bytes(resumed.opt_state) == leaf_bytes(run.opt_state)
    assert without_wall_time(resumed.metrics) == without_wall_time(run.metrics)
    # The damaged checkpoints are set aside; each step the resumed run saved was read back before
    # the older ones beyond the newest three were deleted.
    assert sorted(p.name for p in folder.iterdir()) == ["32", "36", "40", "damaged"]
    assert sorted(int(p.name) for p in (folder / "damaged").iterdir()) == sorted(DAMAGES)


def test_no_intact_checkpoint_is_an_error_naming_each_and_the_fix(run, tmp_path):
    config = _copy(run, tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    for step in STEPS[:-2]:
        shutil.rmtree(folder / str(step))
    _flip_bytes(folder / "40")
    _delete_item("state")(folder / "36")
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError) as error:
        train(config, resume=True, progress=False)
    message = str(error.value)
    assert f"no checkpoint in {folder} is intact: step 40 ({folder / '40'}): the bytes of its file" in message
    assert f"; step 36 ({folder / '36'}): its item 'state' is missing" in message
    assert f"To start over from step 0, delete {folder} and resume again" in message
    # Nothing was moved, overwritten or restarted from step 0.
    assert sorted(p.name for p in folder.iterdir()) == ["36", "40"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log


def _flip_after_writing(monkeypatch) -> None:
    """Every later save rots on its way to disk: orbax writes it, then 400 of its bytes flip."""
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        saved = real_save(self, step, *args, **kwargs)
        _flip_bytes(Path(self.directory) / str(step))
        return saved

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_old_checkpoints_are_deleted_only_after_a_newer_one_reads_back_intact(tmp_path, monkeypatch):
    # Random floats do not compress, so zstd stores them raw and the flipped bytes decode: orbax
    # reads the rotted checkpoint without complaint.
    state = {"w": jax.random.normal(jax.random.key(0), (4096,)), "key": jax.random.key(1)}
    template = {"w": jnp.zeros(4096), "key": jax.random.key(0)}
    with Checkpoints(tmp_path, keep=1) as checkpoints:
        checkpoints.save(1, state, {"step": 1})
        checkpoints.save(2, state, {"step": 2})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]  # read back intact, so step 1 could go
        _flip_after_writing(monkeypatch)
        # The files are as written, so only the digests of the arrays in memory can tell.
        bad = rf"checkpoint at step 3 \({re.escape(str(tmp_path / '3'))}\) did not read back intact: 1 of its 2 arrays"
        with pytest.raises(OSError, match=bad):
            checkpoints.save(3, state, {"step": 3})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]  # step 2 is kept
        restored = checkpoints.restore_latest_intact(template)
    assert (restored.step, restored.record) == (2, {"step": 2}) and leaf_bytes(restored.state) == leaf_bytes(state)
    assert [(error.step, error.reason.split(":")[0]) for error in restored.damaged] == [
        (3, "it has no file list (files.json)")
    ]


# --- what --resume says ---------------------------------------------------------------------------


def test_resume_says_where_it_starts(run, tmp_path, capsys):
    """Resuming from a checkpoint is checked above; here a finished run, and a run with none."""
    _copy(run, tmp_path)
    out, folder = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert f"run already complete at step 40 (checkpoint {folder / '40'})" in capsys.readouterr().err
    shutil.rmtree(folder)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert f"no checkpoint in {folder}: starting from step 0" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30, 40]


@pytest.mark.parametrize("name, message", [("nowhere", "no such folder"), (".", "no config.json there")])
def test_resume_names_a_folder_that_does_not_exist_or_holds_no_run(tmp_path, capsys, name, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", str(tmp_path / name), "--quiet"])
    assert exit_.value.code == 2
    assert f"--resume {tmp_path / name}: {message}" in capsys.readouterr().err
