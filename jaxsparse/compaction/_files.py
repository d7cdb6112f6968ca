"""Saving and restoring a compacted model: ``params.npz``, ``kept.json`` and their checksums.

A saved :class:`~jaxsparse.compaction.CompactModel` is a folder of three files:

* ``params.npz``: the smaller parameters, one array per leaf, keyed by its
  :func:`~jaxsparse.masks.leaf_name` (``params/Conv_0/kernel``). Dtypes numpy does not know
  (``bfloat16``) are stored as unsigned integers of the same width and viewed back on load.
* ``kept.json``: per leaf, in flattening order, the original shape and dtype, per axis the kept
  indices (``null``: the whole axis), the compacted shape, why zero channels were kept, and a
  sha256 of the array (its dtype, shape and bytes) as it was in memory.
* ``files.json``, written last: the size and sha256 of the other two files.

Why the function is not saved. ``apply_fn`` is code; :func:`load_compacted` takes it again, as
``CompactModel`` needs it to re-trace the original model for each input shape. With the same
``apply_fn``, the kept indices and the same arrays, the restored model runs the same primitives on
the same values, so its outputs equal the saved model's bit for bit.

Why checksums, as for the training checkpoints (:mod:`jaxsparse.training._checkpoint`): numpy reads
an ``.npz`` whose bytes changed without complaint, and a model with flipped bytes would compute
garbage. A file that is missing, resized or changed since it was written raises
:class:`DamagedCompactedModelError`, naming the folder, the file and how to make it again. The
arrays' own digests also catch a file that was wrong as written.

Saving is atomic: the files are written into a temporary sibling folder, which is renamed into
place only once all of them are; a process killed mid-save leaves the previous folder (or none),
never a mixture. This module needs only numpy and jax (no orbax), like the rest of the core.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse._file_lists import file_list_problem, write_file_list
from jaxsparse.compaction._compact import CompactModel, LeafReport
from jaxsparse.masks import Params, leaf_names

__all__ = ["DamagedCompactedModelError", "load_compacted", "save_compacted"]

_PARAMS = "params.npz"
_FOLD = "fold:"
"""The prefix of the folded constants' keys in ``params.npz`` (no leaf name has a colon)."""
_KEPT = "kept.json"

_FORMAT = 1


class DamagedCompactedModelError(OSError):
    """A saved compacted model whose files are missing, changed since written, or inconsistent.

    Attributes:
      path: the model's folder.
      reason: what is wrong, in one line (it names the file).
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"compacted model in {path} is damaged: {reason}. Save it again from the model (save_compacted), or "
            f"for a training run run `jaxsparse compact RUN_DIR` again."
        )
        self.path, self.reason = path, reason


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(f"{array.dtype.name}{array.shape}".encode() + array.tobytes()).hexdigest()


def _stored(array: np.ndarray) -> np.ndarray:
    """``array`` as numpy can save it: dtypes from outside numpy (bfloat16) as unsigned integers."""
    return array if array.dtype.isbuiltin == 1 else array.view(f"u{array.dtype.itemsize}")


def save_compacted(model: CompactModel, folder: str | Path) -> Path:
    """Writes ``model``'s smaller parameters and kept indices into ``folder``, atomically.

    ``folder`` is replaced as a whole if it exists. Restore with :func:`load_compacted` and the same
    ``apply_fn``.

    Args:
      model: what :func:`~jaxsparse.compaction.compact` returned.
      folder: where to write ``params.npz``, ``kept.json`` and ``files.json``.

    Returns:
      The folder, as an absolute path.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> from jaxsparse.compaction import compact, load_compacted
      >>> apply_fn = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> params = {"w1": jnp.array([[1.0, 0.0, 2.0]]), "w2": jnp.ones((3, 2))}
      >>> folder = save_compacted(compact(apply_fn, params, jnp.ones((1, 1))), tempfile.mkdtemp() + "/small")
      >>> restored = load_compacted(folder, apply_fn)
      >>> restored.params["w1"].shape, restored(restored.params, jnp.ones((1, 1))).tolist()
      ((1, 2), [[3.0, 3.0]])
    """
    folder = Path(folder).absolute()
    names = leaf_names(model.params)
    arrays = [np.asarray(x) for x in jax.tree.leaves(model.params)]
    fulls = jax.tree.leaves(model.full_shapes)
    because = {r.name: r.kept_because for r in model.report}
    leaves = [
        {
            "name": name,
            "shape": list(full.shape),
            "dtype": np.dtype(full.dtype).name,
            "kept": [None if k is None else np.asarray(k).tolist() for k in model.kept[name]],
            "after": list(array.shape),
            "kept_because": {str(axis): reason for axis, reason in because.get(name, {}).items()},
            "sha256": _array_digest(array),
        }
        for name, array, full in zip(names, arrays, fulls, strict=True)
    ]
    folds = [
        {"product": ordinal, "key": f"{_FOLD}{ordinal}", "dtype": np.asarray(term).dtype.name,
         "sha256": _array_digest(np.asarray(term))}
        for ordinal, term in model.folds
    ]  # fmt: skip
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    if partial.exists():  # left by an earlier process of this id that was killed mid-save
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        with (partial / _PARAMS).open("wb") as file:
            stored = {name: _stored(a) for name, a in zip(names, arrays, strict=True)}
            stored.update(
                {fold["key"]: _stored(np.asarray(term)) for fold, (_, term) in zip(folds, model.folds, strict=True)}
            )
            np.savez(file, **stored)
        record = {"format": _FORMAT, "leaves": leaves, "folds": folds}
        (partial / _KEPT).write_text(json.dumps(record, indent=1) + "\n")
        write_file_list(partial)
        if folder.exists():
            # A rename cannot replace a non-empty folder: move the old one aside first, then drop it.
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
            os.replace(partial, folder)
            shutil.rmtree(old)
        else:
            os.replace(partial, folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return folder


def _nested(names: list[str], leaves: list[Any]) -> dict[str, Any]:
    """A nested dict from ``/``-separated names."""
    tree: dict[str, Any] = {}
    for name, leaf in zip(names, leaves, strict=True):
        *parents, last = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree


def load_compacted(folder: str | Path, apply_fn: Callable, tree_like: Params | None = None) -> CompactModel:
    """The compacted model saved in ``folder`` by :func:`save_compacted`, checked against its checksums.

    Args:
      folder: the saved model's folder.
      apply_fn: the original model, called as ``apply_fn(params, *args)``: the one given to
        :func:`~jaxsparse.compaction.compact`.
      tree_like: a tree of the original parameters' structure (arrays or ``jax.ShapeDtypeStruct``,
        e.g. from ``jax.eval_shape(model.init, ...)``); its leaf names and shapes must be the saved
        ones. Default: nested dicts from the ``/``-separated leaf names (a flax variables dict).

    Returns:
      The :class:`~jaxsparse.compaction.CompactModel`; its outputs equal the saved model's bit for bit.

    Raises:
      FileNotFoundError: ``folder`` is not a folder.
      DamagedCompactedModelError: a file is missing, changed since it was written, or fails its
        arrays' checksums; the message names the file.
      ValueError: ``tree_like`` does not have the saved leaves' names and shapes.
    """
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; give a folder written by save_compacted.")
    problem = file_list_problem(folder)
    if problem is not None:
        raise DamagedCompactedModelError(folder, problem)
    try:
        record = json.loads((folder / _KEPT).read_text())
        leaves = record["leaves"]
        with np.load(folder / _PARAMS, allow_pickle=False) as stored:
            arrays = [stored[leaf["name"]].view(jnp.dtype(leaf["dtype"])) for leaf in leaves]
            folds = [(f["product"], stored[f["key"]].view(jnp.dtype(f["dtype"]))) for f in record.get("folds", [])]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedCompactedModelError(folder, f"it cannot be read ({type(error).__name__}: {error})") from None
    for leaf, array in zip(leaves, arrays, strict=True):
        if list(array.shape) != leaf["after"] or _array_digest(array) != leaf["sha256"]:
            raise DamagedCompactedModelError(
                folder, f"the array {leaf['name']!r} in {_PARAMS} does not match its checksum in {_KEPT}"
            )
    for fold, (_, term) in zip(record.get("folds", []), folds, strict=True):
        if _array_digest(term) != fold["sha256"]:
            raise DamagedCompactedModelError(
                folder, f"the folded constant {fold['key']!r} in {_PARAMS} does not match its checksum in {_KEPT}"
            )
    names = [leaf["name"] for leaf in leaves]
    shapes = [jax.ShapeDtypeStruct(tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])) for leaf in leaves]
    if tree_like is None:
        structure = jax.tree.structure(_nested(names, shapes))
        if leaf_names(jax.tree.unflatten(structure, shapes)) != names:
            # Sorted dict keys would reorder the leaves; the saved order is the model's own.
            raise ValueError(
                f"the leaves saved in {folder / _KEPT} are not in the order of nested dicts; pass tree_like, a tree "
                "of the model's original parameters."
            )
    else:
        structure = jax.tree.structure(tree_like)
        given = leaf_names(tree_like)
        given_shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(tree_like)]
        if given != names or given_shapes != [s.shape for s in shapes]:
            raise ValueError(
                f"tree_like does not match the model saved in {folder}: its leaves are "
                f"{list(zip(given, given_shapes, strict=True))[:6]}..., the saved ones "
                f"{[(n, s.shape) for n, s in zip(names, shapes, strict=True)][:6]}...; pass the original model's "
                "parameter tree (e.g. jax.eval_shape of its init)."
            )
    kept = {
        leaf["name"]: tuple(None if k is None else np.asarray(k, np.int64) for k in leaf["kept"]) for leaf in leaves
    }
    report = tuple(
        LeafReport(leaf["name"], tuple(leaf["shape"]), tuple(leaf["after"]), _axes(leaf["kept_because"]))
        for leaf in leaves
    )
    return CompactModel(
        apply_fn,
        jax.tree.unflatten(structure, shapes),
        kept,
        jax.tree.unflatten(structure, [jnp.asarray(a) for a in arrays]),
        report,
        tuple(folds),
    )


def _axes(because: Mapping[str, str]) -> dict[int, str]:
    return {int(axis): reason for axis, reason in because.items()}
