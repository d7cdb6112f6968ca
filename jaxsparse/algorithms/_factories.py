"""Factories: one function per algorithm, validating every hyperparameter when it is built.

Every factory takes ``sparsity=`` (Top-KAST: ``forward_sparsity=``/``backward_sparsity=``),
``distribution=`` and, as ``**layout_options``, the remaining :class:`~jaxsparse.masks.SparsityLayout`
fields: ``erk_power_scale``, ``layer_sparsity``, ``include``, ``keep_dense``,
``dense_first_layer``, ``dense_last_layer``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxsparse.algorithms._base import SparseAlgorithm
from jaxsparse.algorithms._drop_and_grow import DropAndGrow
from jaxsparse.algorithms._gradual_magnitude import GradualMagnitude
from jaxsparse.algorithms._top_kast import TopKast
from jaxsparse.masks import SparsityLayout
from jaxsparse.schedules import (
    Schedule,
    UpdateSchedule,
    constant_drop_fraction,
    cosine_drop_fraction,
    polynomial_sparsity,
)
from jaxsparse.scores import gradient_magnitude, random

__all__ = ["gradual_magnitude", "rigl", "set_", "static", "top_kast"]

DROP_FRACTION_DECAYS = ("cosine", "constant")


def _layout(sparsity: float, distribution: str, layout_options: dict) -> SparsityLayout:
    try:
        return SparsityLayout(sparsity=sparsity, distribution=distribution, **layout_options)
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise TypeError(
            f"{error}; layout options are erk_power_scale, layer_sparsity, include, keep_dense, "
            "dense_first_layer and dense_last_layer."
        ) from None


def _drop_fraction(
    drop_fraction: float | Schedule, decay: str, schedule: UpdateSchedule
) -> Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]:
    if callable(drop_fraction):
        return drop_fraction
    if decay not in DROP_FRACTION_DECAYS:
        raise ValueError(
            f"unknown drop_fraction_decay {decay!r}; choose 'cosine' or 'constant', or pass a "
            "schedule callable (e.g. jaxsparse.schedules.exponential_drop_fraction(...)) as drop_fraction."
        )
    if decay == "constant":
        return constant_drop_fraction(drop_fraction)
    if schedule.end_step is None:
        raise ValueError(
            "the cosine drop-fraction decay needs end_step (RigL uses about 75% of training); "
            "pass end_step=..., or drop_fraction_decay='constant'."
        )
    return cosine_drop_fraction(drop_fraction, schedule.begin_step, schedule.end_step)


def static(sparsity: float, *, distribution: str = "erk", **layout_options) -> SparseAlgorithm:
    """Static sparse training: random masks at init that never change.

    Args:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = static(0.9)
      >>> algo.layout.distribution
      'erk'
    """
    return SparseAlgorithm(layout=_layout(sparsity, distribution, layout_options))


def _drop_and_grow(
    name: str,
    grow_score,
    sparsity: float,
    distribution: str,
    update_every: int,
    begin_step: int,
    end_step: int | None,
    drop_fraction: float | Schedule,
    drop_fraction_decay: str,
    skip_optimizer_on_update: bool,
    grow_init: jax.nn.initializers.Initializer,
    layout_options: dict,
) -> DropAndGrow:
    schedule = UpdateSchedule(begin_step, end_step, update_every)
    return DropAndGrow(
        name=name,
        layout=_layout(sparsity, distribution, layout_options),
        schedule=schedule,
        drop_fraction=_drop_fraction(drop_fraction, drop_fraction_decay, schedule),
        grow_score=grow_score,
        skip_optimizer_on_update=skip_optimizer_on_update,
        grow_init=grow_init,
    )


def set_(
    sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 100,
    begin_step: int = 0,
    end_step: int | None = None,
    drop_fraction: float | Schedule = 0.3,
    drop_fraction_decay: str = "cosine",
    skip_optimizer_on_update: bool = True,
    grow_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros,
    **layout_options,
) -> DropAndGrow:
    """SET: drop the smallest-magnitude weights, regrow uniformly at random.

    Every ``update_every`` steps in ``[begin_step, end_step]``, each layer with ``n`` active weights
    drops ``floor(n f_t)`` by ``|theta|`` and grows as many uniformly at random among the rest.

    Args:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      update_every: steps between mask updates.
      begin_step: first step that updates masks (0 updates on the very first step).
      end_step: last step that may update masks (``None``: never stop; then use a constant decay).
      drop_fraction: ``alpha``, or a schedule ``step -> f_t``.
      drop_fraction_decay: ``"cosine"`` (RigL's, from ``alpha`` at ``begin_step`` to 0 at
        ``end_step``) or ``"constant"``.
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (RigL reference).
      grow_init: initializer of grown weights (zeros, as in the RigL codebase).
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = set_(0.9, end_step=1000)
      >>> algo.name
      'set'

    References:
      Mocanu et al., Nature Communications 9, 2383 (2018).
    """
    return _drop_and_grow(
        "set", random, sparsity, distribution, update_every, begin_step, end_step, drop_fraction,
        drop_fraction_decay, skip_optimizer_on_update, grow_init, layout_options,
    )  # fmt: skip


def rigl(
    sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 100,
    begin_step: int = 0,
    end_step: int | None = None,
    drop_fraction: float | Schedule = 0.3,
    drop_fraction_decay: str = "cosine",
    skip_optimizer_on_update: bool = True,
    grow_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros,
    **layout_options,
) -> DropAndGrow:
    """RigL: drop the smallest-magnitude weights, regrow where the dense gradient is largest.

    Like :func:`set_`, but growth takes the top ``floor(n f_t)`` inactive positions by
    ``|dL/d(theta * m)|``, the dense gradient with respect to the masked weights.

    Args:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      update_every: steps between mask updates (``Delta T``; the paper uses 100).
      begin_step: first step that updates masks.
      end_step: last step that may update masks (the paper: about 75% of training).
      drop_fraction: ``alpha`` (0.3 in the paper), or a schedule ``step -> f_t``.
      drop_fraction_decay: ``"cosine"`` (the paper's) or ``"constant"``.
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (the reference's).
      grow_init: initializer of grown weights (zeros, as in the reference).
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = rigl(0.9, distribution="erk", update_every=100, end_step=7_500, drop_fraction=0.3)
      >>> round(float(algo.drop_fraction(0)), 6), float(algo.drop_fraction(7_500))
      (0.3, 0.0)

    References:
      Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners",
      ICML 2020.
    """
    return _drop_and_grow(
        "rigl", gradient_magnitude, sparsity, distribution, update_every, begin_step, end_step,
        drop_fraction, drop_fraction_decay, skip_optimizer_on_update, grow_init, layout_options,
    )  # fmt: skip


def top_kast(
    forward_sparsity: float,
    backward_sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 1,
    begin_step: int = 0,
    end_step: int | None = None,
    penalty: float = 1e-4,
    skip_optimizer_on_update: bool = False,
    **layout_options,
) -> TopKast:
    """Top-KAST: forward on the top ``D`` weights, train the top ``D + M``.

    Args:
      forward_sparsity: sparsity of the forward set ``A`` (``1 - D``).
      backward_sparsity: sparsity of the backward set ``B`` (``1 - D - M``), at most
        ``forward_sparsity``.
      distribution: how both sparsities are laid out over layers.
      update_every: steps between recomputations of ``A`` and ``B`` (the paper: every step).
      begin_step: first recomputation step.
      end_step: last recomputation step (``None``: to the end of training).
      penalty: exploration-penalty coefficient (see :class:`~jaxsparse.algorithms.TopKast`).
      skip_optimizer_on_update: apply no optimizer step when the sets are recomputed.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = top_kast(0.9, 0.8)
      >>> algo.layout.sparsity, algo.backward_layout.sparsity
      (0.9, 0.8)

    References:
      Jayakumar et al., "Top-KAST: Top-K Always Sparse Training", NeurIPS 2020.
    """
    return TopKast(
        layout=_layout(forward_sparsity, distribution, layout_options),
        backward_layout=_layout(backward_sparsity, distribution, layout_options),
        schedule=UpdateSchedule(begin_step, end_step, update_every),
        penalty=penalty,
        skip_optimizer_on_update=skip_optimizer_on_update,
    )


def gradual_magnitude(
    sparsity: float,
    *,
    distribution: str = "erk",
    begin_step: int = 0,
    end_step: int,
    update_every: int = 100,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
    scope: str = "layer",
    skip_optimizer_on_update: bool = False,
    **layout_options,
) -> GradualMagnitude:
    """Gradual magnitude pruning on Zhu & Gupta's polynomial ramp.

    Every ``update_every`` steps from ``begin_step`` to ``end_step`` the smallest-magnitude active
    weights are pruned to the scheduled sparsity
    ``s_t = S + (s_i - S)(1 - (t - t_0)/(t_end - t_0))^power``.

    Args:
      sparsity: final global sparsity ``S`` in ``[0, 1)``.
      distribution: how ``S`` is split over layers (ignored by ``scope="global"``).
      begin_step: ``t_0``, the first pruning step.
      end_step: ``t_end``, the step at which ``S`` is reached.
      update_every: ``Delta t`` between pruning steps.
      initial_sparsity: ``s_i``; training starts from the top weights at this sparsity.
      power: exponent of the ramp (3 in the paper).
      scope: ``"layer"`` (each layer reaches its own target) or ``"global"`` (one threshold).
      skip_optimizer_on_update: apply no optimizer step on pruning steps.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = gradual_magnitude(0.9, begin_step=0, end_step=1000)
      >>> round(float(algo.sparsity_schedule(500)), 4)
      0.7875

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017.
    """
    layout = _layout(sparsity, distribution, layout_options)
    if not 0.0 <= initial_sparsity <= sparsity:
        raise ValueError(f"initial_sparsity={initial_sparsity!r} must be in [0, sparsity={sparsity}].")
    return GradualMagnitude(
        layout=layout,
        schedule=UpdateSchedule(begin_step, end_step, update_every),
        sparsity_schedule=polynomial_sparsity(sparsity, begin_step, end_step, initial_sparsity, power),
        initial_sparsity=initial_sparsity,
        scope=scope,
        skip_optimizer_on_update=skip_optimizer_on_update,
    )
