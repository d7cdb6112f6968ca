"""Checkpoints of a run with orbax: the whole training state, a small JSON record, and their checksums.

A checkpoint at step ``t`` holds everything the rest of the run depends on:

* ``state``: the params, the model's mutable collections (batch statistics), the optimizer state
  (for sparse runs the whole :class:`~jaxsparse.SparsifyState`: masks, inner optimizer state, step
  and PRNG key), and the metrics accumulators (training-loss sum since the last evaluation, masks
  at the last evaluation);
* ``record``: the step, the run's config, the wall time so far and the step of the last evaluation;
* ``digests``: a sha256 of every array of ``state`` (its dtype, shape and bytes), keyed by its path
  in the tree, and one of ``record``;
* ``files.json``, written last, once the checkpoint has been read back intact: the size and sha256
  of each of orbax's files.

The step is also the data position: batches are a pure function of ``(seed, step)``, so no
iterator state needs saving. Typed PRNG keys cannot be serialised, so they are stored as
``jax.random.key_data`` and rewrapped, with the template's key implementation, on restore.

Why checksums. orbax and TensorStore notice a file that is missing or too short, but not one whose
bytes changed: a checkpoint with 400 flipped bytes restores without complaint, with Adam moments of
1e38, and the run carries on from garbage. A checkpoint that differs from what was written, fails
to read or lacks a piece is *damaged*: :class:`DamagedCheckpointError` names its step, its folder
and the reason. Restoring checks two layers:

1. The file list, before orbax reads anything: a file missing, resized or changed since it was
   verified is named as such, and a checkpoint without a list (its writer stopped first) is
   damaged. So orbax only ever reads files that it once read back intact, and never fails part-way
   through a read, which would leave TensorStore callbacks aimed at its closed event loop (printed
   as "Exception ignored ... Event loop is closed") and a traceback that names no checkpoint.
2. The arrays' digests, on what orbax restored: they were taken from the arrays in memory, so they
   also catch what the file list cannot, a checkpoint that was wrong as written. That is the check
   :meth:`Checkpoints.save` makes when it reads a new checkpoint back.

Fall back, never guess. :meth:`Checkpoints.restore_latest_intact` tries the checkpoints newest
first and returns the first intact one, with the damaged ones it skipped. Those are moved to
``<directory>/damaged/<step>``: the resumed run writes those steps again, and the evidence stays
until you delete it. If no checkpoint is intact it raises :class:`NoIntactCheckpointError`, naming
each one, and moves nothing.

Deleting old checkpoints is ours, not orbax's. orbax's ``max_to_keep`` deletes the oldest
checkpoint as soon as a new one is written, before anything has read the new one back, so a bad
write (or a resume from a damaged checkpoint) can cost every good one. Here :meth:`Checkpoints.save`
reads the new checkpoint back and verifies it, and only then deletes those older than it beyond
the newest ``keep``. A checkpoint is therefore deleted only once a newer one is known to restore
intact. The read-back costs one extra read of the state per checkpoint and goes through the
operating system's page cache: it proves the checkpoint complete and decodable, not that the disk
keeps it. Bytes that rot later are caught at restore, by the same checksums.

orbax writes each checkpoint into a temporary folder and renames it into place only once every
file is written, so a process killed mid-save leaves the previous checkpoint as the latest one;
the leftover temporary folder is removed when the next :class:`Checkpoints` opens the directory.
Saving is synchronous on purpose: training donates its buffers to the next step, and on CPU a host
view of a device array can share its memory, so the write must finish before the step that reuses
it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsparse._file_lists import file_list_problem, write_file_list

__all__ = ["Checkpoints", "DamagedCheckpointError", "NoIntactCheckpointError", "Restored"]


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _storable(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _unstorable(tree: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x, tree, template
    )


def _array_digests(tree: Any) -> dict[str, str]:
    """A sha256 of each leaf's dtype, shape and host bytes, keyed by the leaf's path in ``tree``."""

    def digest(leaf: Any) -> str:
        array = np.asarray(leaf)
        return hashlib.sha256(f"{array.dtype.name}{array.shape}".encode() + array.tobytes()).hexdigest()

    return {jax.tree_util.keystr(path): digest(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _record_digest(record: dict[str, Any]) -> str:
    # The JSON text, not the object: a tuple saved comes back a list, with the same text.
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _some(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _mismatch(state: Any, record: dict[str, Any], digests: dict[str, Any]) -> str | None:
    """Why ``state`` and ``record`` are not what was saved with ``digests``, or ``None`` if they are."""
    found, expected = _array_digests(state), digests["arrays"]
    if found.keys() != expected.keys():
        missing = sorted(expected.keys() - found.keys())
        unexpected = sorted(found.keys() - expected.keys())
        kinds = (("missing", missing), ("unexpected", unexpected))
        return "its arrays are not the tree that was saved: " + "; ".join(f"{k} {_some(p)}" for k, p in kinds if p)
    wrong = [path for path in expected if found[path] != expected[path]]
    if wrong:
        return f"{len(wrong)} of its {len(expected)} arrays do not match their checksums: {_some(wrong)}"
    if _record_digest(record) != digests["record"]:
        return "its record does not match its checksum"
    return None


def _reason(error: BaseException) -> str:
    """One line from a failed read: the innermost error, where TensorStore says which file and why."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    line = " ".join(text.split("See full TensorStore details")[0].split())
    return f"{type(error).__name__}: {line[:400]}"


class DamagedCheckpointError(Exception):
    """A checkpoint that cannot be restored intact: it fails to read, lacks a piece, or fails its checksums.

    Attributes:
      step: the checkpoint's step.
      path: its folder.
      reason: what is wrong, in one line.
    """

    def __init__(self, step: int, path: Path, reason: str) -> None:
        super().__init__(f"checkpoint at step {step} ({path}) is damaged: {reason}")
        self.step, self.path, self.reason = step, path, reason


class NoIntactCheckpointError(Exception):
    """Every checkpoint of a directory is damaged; the message names each one and why.

    Attributes:
      directory: the checkpoints' folder.
      damaged: the damaged checkpoints, newest first.
    """

    def __init__(self, directory: Path, damaged: Sequence[DamagedCheckpointError]) -> None:
        details = "; ".join(f"step {error.step} ({error.path}): {error.reason}" for error in damaged)
        super().__init__(f"no checkpoint in {directory} is intact: {details}")
        self.directory, self.damaged = directory, tuple(damaged)


class Restored(NamedTuple):
    """What :meth:`Checkpoints.restore_latest_intact` returns.

    Attributes:
      state: the restored state, shaped and typed like the template.
      record: the checkpoint's JSON record.
      step: the checkpoint's step.
      path: the checkpoint's folder.
      damaged: the newer checkpoints found damaged and set aside, newest first.
    """

    state: Any
    record: dict[str, Any]
    step: int
    path: Path
    damaged: tuple[DamagedCheckpointError, ...]


class Checkpoints:
    """The checkpoints of one results folder (``<out_dir>/checkpoints/<step>``), newest ``keep`` kept.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> with Checkpoints(tempfile.mkdtemp(), keep=2) as checkpoints:
      ...     checkpoints.save(5, {"w": jnp.ones(2)}, {"step": 5})
      ...     state, record = checkpoints.restore({"w": jnp.zeros(2)})
      >>> state["w"].tolist(), record["step"]
      ([1.0, 1.0], 5)
    """

    def __init__(self, directory: str | Path, *, keep: int) -> None:
        self.directory = Path(directory).absolute()
        self.damaged_directory = self.directory / "damaged"
        self._keep = keep
        # Checkpoints a killed process left half-written are removed here, before anything else
        # runs: orbax's own ``cleanup_tmp_directories`` removes them in a background thread that
        # ``close`` does not wait for, so two managers opened in turn could race on one folder.
        for partial in ocp.utils.tmp_checkpoints(self.directory):
            shutil.rmtree(partial.get())
        # max_to_keep=None: deleting is ours, and waits for a verified newer checkpoint (see above).
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False)
        )

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first (intact or not: only a restore tells)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None`` if there is none."""
        return self._manager.latest_step()

    def path(self, step: int) -> Path:
        """The folder of the checkpoint of ``step``."""
        return self.directory / str(step)

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Writes ``state`` (a pytree of arrays) and ``record`` (JSON) as the checkpoint of ``step``.

        The checkpoint is then read back and verified, and only after that are the checkpoints
        older than it beyond the newest ``keep`` deleted.

        Raises:
          OSError: the checkpoint did not read back intact; the older checkpoints are all kept.
        """
        storable = _storable(state)
        digests = {"arrays": _array_digests(storable), "record": _record_digest(record)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(storable),
                record=ocp.args.JsonSave(record),
                digests=ocp.args.JsonSave(digests),
            ),
            force=True,
        )
        try:
            self._read(step, state)
        except DamagedCheckpointError as error:
            raise OSError(
                f"checkpoint at step {step} ({error.path}) did not read back intact: {error.reason}. The older "
                "checkpoints are kept; check the disk (free space, errors), then resume the run."
            ) from None
        write_file_list(self.path(step))
        steps = self.steps()
        for old in steps[: max(len(steps) - self._keep, 0)]:
            if old < step:
                self._manager.delete(old)

    def restore(self, template: Any, *, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The checkpoint of ``step`` (default: the newest), verified against its checksums.

        Args:
          template: a state of the run's structure; the restored one has its shapes, dtypes,
            shardings and PRNG key implementations.
          step: which checkpoint.

        Returns:
          The state and the checkpoint's JSON record.

        Raises:
          FileNotFoundError: there is no checkpoint.
          DamagedCheckpointError: the checkpoint fails to read, lacks an item or fails its checksums.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}.")
        problem = file_list_problem(self.path(step))
        if problem is not None:
            raise DamagedCheckpointError(step, self.path(step), problem)
        return self._read(step, template)

    def _read(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        """The checkpoint of ``step`` as orbax reads it, checked against its arrays' digests."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_storable(template)),
                    record=ocp.args.JsonRestore(),
                    digests=ocp.args.JsonRestore(),
                ),
            )
            problem = _mismatch(restored.state, restored.record, restored.digests)
        # TensorStore raises bare ``Exception``s; whatever stops a read makes the checkpoint damaged.
        except Exception as error:
            problem = _reason(error)
        if problem is not None:
            raise DamagedCheckpointError(step, self.path(step), problem)
        return _unstorable(restored.state, template), restored.record

    def restore_latest_intact(self, template: Any) -> Restored:
        """The newest intact checkpoint, the damaged newer ones set aside in :attr:`damaged_directory`.

        Raises:
          FileNotFoundError: there is no checkpoint.
          NoIntactCheckpointError: every checkpoint is damaged (and none was moved).
        """
        damaged = []
        for step in reversed(self.steps()):
            try:
                state, record = self.restore(template, step=step)
            except DamagedCheckpointError as error:
                damaged.append(error)
                continue
            for error in damaged:
                self._set_aside(error.step)
            return Restored(state, record, step, self.path(step), tuple(damaged))
        if not damaged:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}.")
        raise NoIntactCheckpointError(self.directory, damaged)

    def _set_aside(self, step: int) -> None:
        target = self.damaged_directory / str(step)
        if target.exists():  # the same step was damaged before: the newer evidence wins
            shutil.rmtree(target)
        self.damaged_directory.mkdir(exist_ok=True)
        shutil.move(self.path(step), target)
        self._manager.reload()

    def read_record(self) -> dict[str, Any] | None:
        """The JSON record (no arrays read) of the newest checkpoint with a readable one, or ``None``.

        Records are read without their checksums: this is for checking a run's settings before
        building its state; :meth:`restore_latest_intact` then reports any damage.
        """
        for step in reversed(self.steps()):
            try:
                return self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record
            # A damaged record: restore_latest_intact reads it again and says why.
            except Exception:
                continue
        return None

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
