"""Checkpoints of a run with orbax: the whole training state plus a small JSON record.

A checkpoint at step ``t`` holds everything the rest of the run depends on:

* ``state``: the params, the model's mutable collections (batch statistics), the optimizer state
  (for sparse runs the whole :class:`~jaxsparse.SparsifyState`: masks, inner optimizer state, step
  and PRNG key), and the metrics accumulators (training-loss sum since the last evaluation, masks
  at the last evaluation);
* ``record``: the step, the run's config, the wall time so far and the step of the last evaluation.

The step is also the data position: batches are a pure function of ``(seed, step)``, so no
iterator state needs saving. Typed PRNG keys cannot be serialised, so they are stored as
``jax.random.key_data`` and rewrapped, with the template's key implementation, on restore.

orbax writes each checkpoint into a temporary folder and renames it into place only once every
file is written, so a process killed mid-save leaves the previous checkpoint as the latest one;
the leftover temporary folder is removed when the next :class:`Checkpoints` opens the directory. Saving is
synchronous on purpose: training donates its buffers to the next step, and on CPU a host view of
a device array can share its memory, so the write must finish before the step that reuses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _storable(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _unstorable(tree: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x, tree, template
    )


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
        # Checkpoints a killed process left half-written are removed here, before anything else
        # runs: orbax's own ``cleanup_tmp_directories`` removes them in a background thread that
        # ``close`` does not wait for, so two managers opened in turn could race on one folder.
        for partial in ocp.utils.tmp_checkpoints(self.directory):
            shutil.rmtree(partial.get())
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None`` if there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Writes ``state`` (a pytree of arrays) and ``record`` (JSON) as the checkpoint of ``step``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_storable(state)), record=ocp.args.JsonSave(record)),
            force=True,
        )

    def restore(self, template: Any) -> tuple[Any, dict[str, Any]]:
        """The newest checkpoint's state, shaped and typed like ``template``, and its record."""
        step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}.")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_storable(template)), record=ocp.args.JsonRestore()),
        )
        return _unstorable(restored.state, template), restored.record

    def read_record(self) -> dict[str, Any] | None:
        """The newest checkpoint's JSON record alone (no arrays read), or ``None`` without checkpoints."""
        step = self.latest_step()
        if step is None:
            return None
        return self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
