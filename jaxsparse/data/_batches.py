"""Batches for training (indexed by step, endless, reshuffled every epoch) and for evaluation.

Both are ``grain.MapDataset``\\ s of whole batches, so they take grain's slicing, ``to_iter_dataset``
and prefetching. Resuming is exact because the training stream is random access: batch ``t`` is a
pure function of ``(dataset, batch_size, seed, t)``, so a checkpoint needs only the step. Grain's
iterators also offer ``get_state``/``set_state``, but that state would be a second copy of the
step, with its own format to save and keep in sync; a prefetching reader starts at any step with
``train_batches(...)[step:].to_iter_dataset()``.

The epoch permutations are drawn whole with NumPy rather than with ``grain.MapDataset.shuffle``:
grain's shuffle inverts its permutation one index at a time, and with its per-element bookkeeping
that cost milliseconds per batch, more than a small model's training step, where one cached
permutation per epoch costs microseconds.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np

from jaxsparse.data._dataset import Dataset, ExampleSource

__all__ = ["eval_batches", "train_batches"]

_KEYS = ("inputs", "labels")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")


def _read(source: ExampleSource, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Stacks the examples at ``indices`` into one batch, in one call when the source allows it."""
    indices = indices.tolist()
    getitems = getattr(source, "__getitems__", None)
    examples = getitems(indices) if getitems is not None else [source[i] for i in indices]
    return {key: np.stack([example[key] for example in examples]) for key in _KEYS}


@functools.lru_cache(maxsize=8)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """``pi_e``: a permutation of ``range(num_examples)`` that depends only on ``(seed, epoch)``."""
    # SeedSequence hashes the pair, so neighbouring seeds or epochs give unrelated orders.
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    permutation.flags.writeable = False  # shared by the cache
    return permutation


@dataclasses.dataclass(frozen=True)
class _TrainReader:
    """Maps step ``t`` (and ``k = t mod K``) to the batch of examples ``pi_e(kB), ..., pi_e(kB + B - 1)``."""

    source: ExampleSource
    batch_size: int
    seed: int
    batches_per_epoch: int

    def __call__(self, step: int, batch_in_epoch: int) -> dict[str, np.ndarray]:
        permutation = _permutation(len(self.source), self.seed, step // self.batches_per_epoch)
        start = batch_in_epoch * self.batch_size
        return _read(self.source, permutation[start : start + self.batch_size])


@dataclasses.dataclass(frozen=True)
class _EvalReader:
    """Maps batch ``k`` to the examples ``kB, ..., min((k + 1)B, N) - 1``."""

    source: ExampleSource
    batch_size: int

    def __call__(self, batch: int) -> dict[str, np.ndarray]:
        start = batch * self.batch_size
        return _read(self.source, np.arange(start, min(start + self.batch_size, len(self.source))))


def train_batches(dataset: Dataset, *, batch_size: int, seed: int) -> grain.MapDataset:
    """The endless training stream: ``train_batches(...)[t]`` is the batch for step ``t``.

    With ``N`` training examples there are ``K = floor(N / B)`` batches per epoch. Step ``t`` is
    batch ``k = t mod K`` of epoch ``e = floor(t / K)`` and holds the examples

    .. math::

        \\pi_e(kB), \\pi_e(kB + 1), \\dots, \\pi_e(kB + B - 1),

    where ``pi_e`` is a permutation of ``{0, ..., N - 1}`` drawn by NumPy's default generator
    seeded with ``SeedSequence([seed, e])``. Within an epoch no example repeats. The last
    ``N - KB`` examples of each permutation are dropped so every batch has exactly ``B`` examples;
    ``pi_e`` changes every epoch, so different examples are dropped each time.

    Args:
      dataset: the data set; its training split is used.
      batch_size: ``B``, at most the number of training examples.
      seed: a non-negative int that fixes every epoch's order.

    Returns:
      A ``grain.MapDataset`` of unbounded length; element ``t`` is ``{"inputs": float32
      [B, *input_shape], "labels": int32 [B]}`` as NumPy arrays.

    Example:
      >>> from jaxsparse.data import load_dataset
      >>> batch = train_batches(load_dataset("digits"), batch_size=32, seed=0)[1000]
      >>> batch["inputs"].shape, batch["labels"].dtype
      ((32, 8, 8, 1), dtype('int32'))
    """
    _check_batch_size(batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    num_examples = len(dataset.train)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_examples} training examples of {dataset.name!r}."
        )
    batches_per_epoch = num_examples // batch_size
    reader = _TrainReader(dataset.train, int(batch_size), int(seed), batches_per_epoch)
    # range(K).repeat() is the endless index space: element t is k = t mod K, and its index is t.
    return grain.MapDataset.range(batches_per_epoch).repeat().map_with_index(reader)


def eval_batches(dataset: Dataset, *, batch_size: int) -> grain.MapDataset:
    """The test split in order, in ``ceil(N / B)`` batches; the last one may be smaller.

    Args:
      dataset: the data set; its test split is used.
      batch_size: ``B``, the size of every batch but the last.

    Returns:
      A finite ``grain.MapDataset`` of ``{"inputs": float32 [b, *input_shape], "labels": int32 [b]}``
      batches that covers every test example exactly once.

    Example:
      >>> from jaxsparse.data import load_dataset
      >>> [len(batch["labels"]) for batch in eval_batches(load_dataset("digits"), batch_size=100)]
      [100, 100, 100, 60]
    """
    _check_batch_size(batch_size)
    num_batches = -(-len(dataset.test) // batch_size)
    return grain.MapDataset.range(num_batches).map(_EvalReader(dataset.test, int(batch_size)))
