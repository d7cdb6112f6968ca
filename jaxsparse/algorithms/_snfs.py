"""SNFS, sparse momentum: prune by magnitude, regrow and redistribute by momentum (Dettmers & Zettlemoyer 2019).

**Momentum.** On every step the algorithm state takes the momentum of the *dense* gradient
``g = dL/d(theta * m)`` of every sparsified leaf, in the form of PyTorch's SGD buffer that the
authors' code reads (``momentum_buffer``, dampening 0):

.. math::

    M_t = \\beta M_{t-1} + g_t, \\qquad M_{-1} = 0, \\quad \\beta = 0.9.

The paper calls momentum "exponentially smoothed gradients"; that form,
``M_t = beta M_{t-1} + (1 - beta) g_t`` (which RigL's reimplementation, ``SparseMomentumOptimizer``
in ``rigl/sparse_optimizers.py``, keeps), is the same sum times ``1 - beta``. Every ranking and
every layer share below is scale-free, so both give the same masks. With Adam the authors' code
ranks by Adam's ``m / (sqrt(v) + 1e-8)`` instead (``get_momentum_for_weight``); here the momentum is
the same whatever the optimizer.

Why the algorithm keeps its own momentum instead of reading the optimizer's: ``sparsify`` hands
the inner optimizer the gradient restricted to the trainable mask, so the optimizer's momentum is
exactly zero at every inactive position, which is where regrowth ranks; and the inner optimizer
may be Adam, Lion or anything else. In the authors' PyTorch code the optimizer's buffer *is* a
momentum of the dense gradient: the weights are multiplied by the mask after each optimizer step
(``Masking.apply_mask``), but the gradient of a zeroed weight is dense, and the buffer is never
reset when masks change. The state here is that buffer, optimizer-independent. It mirrors the
params tree (``None`` at dense leaves), so it is sharded like the parameters; it is float32 (or
wider), so a bfloat16 model's small gradients are not lost in the sum.

**A mask update** at step ``t`` with prune rate ``p_t`` (cosine decay from ``p = 0.5`` at
``begin_step`` to 0 at ``end_step``) runs over the sparsified layers ``l`` with ``n_l`` active
entries of ``N_l``:

1. **Shares.** ``s_l = mean |M|`` over the layer's active weights, before pruning
   (``momentum_redistribution`` in ``sparselearning/funcs.py``, called by
   ``Masking.gather_statistics``), normalised to ``s_l / sum_k s_k``.
2. **Prune** per layer by magnitude: ``d_l = min(ceil(p_t n_l), n_l - 1)`` entries with the
   smallest ``|theta|`` leave (``magnitude_prune``: ``ceil(prune_rate * nonzeros)``, per layer).
   The cap is this library's: every layer keeps at least one active entry, so its share stays
   defined and no layer is cut off (the code can empty a layer at ``p = 1``).
3. **Redistribute** the global total ``D = sum_l d_l`` in proportion to the shares, each layer
   capped at its free capacity ``c_l = N_l - (n_l - d_l)`` (the just-pruned entries included), the
   overflow of capped layers shared among the others in proportion to their shares (water
   filling), then rounded to integers by largest remainder so that exactly ``D`` regrow
   (:func:`regrowth_counts`).
4. **Regrow** ``r_l`` entries per layer with the largest ``|M|`` among its inactive ones, the
   just-pruned included (``momentum_growth``).

So the global count of active entries is exactly the layout's total after every update, while
per-layer counts move (``fixed_counts = False``); a layer never falls below its post-prune count,
and never below one active entry. Grown weights start at 0 and their optimizer slots are reset
(``sparsify``); by default no optimizer step is taken on an update step, RigL's convention.

**Where this differs from the authors' code** (``sparselearning/core.py``, ``Masking``): there,
``calc_growth_redistribution`` rounds shares up (``ceil``), caps each layer at 0.99 of its free
capacity, spreads the overflow *equally* over all layers and iterates up to 1000 times, then
``truncate_weights`` floors the counts and corrects the drift of the total on later updates by an
exponentially smoothed residual (``adjusted_growth``), so its total is only approximately
constant. Here the total is exact on every update and the overflow follows the shares. The
code's ``CosineDecay`` is PyTorch's ``CosineAnnealingLR`` over all of training down to
``eta_min = 0.005`` (not 0), stepped every optimizer step; here it decays over
``begin_step .. end_step`` to 0 (RigL's schedule, :func:`~jaxsparse.schedules.cosine_drop_fraction`).
The code prunes once per epoch (``at_end_of_epoch``): set ``update_every`` to the steps of an
epoch to match it. Its ``adjust_prune_rate`` (lower the rate of a nearly dense, growing layer)
and the ``momentum_neuron`` / random growth and other redistribution modes are not built. Layers
the distribution saturated to dense stay dense and take no part, as in every algorithm here.

**Structures.** Whole-layer group structures (blocks, output or input channels, heads) fall out of
the same rule: counts are in groups (the unit the layout budgets), pruning ranks groups by the
norm of their weights, growth by the norm of their momentum, and a layer's share is still the mean
``|M|`` over its active weights. Row-wise structures (N:M, constant fan-in) fix every row's count,
so no count can move between layers: they are refused.

References:
  Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training without Losing
  Performance", arXiv:1907.04840, 2019; code: github.com/TimDettmers/sparse_learning
  (``sparselearning/core.py``: ``CosineDecay``, ``Masking.truncate_weights``,
  ``gather_statistics``, ``calc_growth_redistribution``, ``get_momentum_for_weight``;
  ``sparselearning/funcs.py``: ``magnitude_prune``, ``momentum_growth``,
  ``momentum_redistribution``).
  Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners", ICML 2020
  (the cosine schedule and the FLOPs accounting of SNFS).
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse._scalars import real_scalar
from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm, layer_key
from jaxsparse.algorithms._drop_and_grow import grad_leaves
from jaxsparse.algorithms._factory_options import DROP_FRACTION_DECAYS, drop_fraction_schedule, make_layout
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import Masks, Params, SparsityLayout, mask_leaves, masks_from_leaves, random_masks
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import Schedule, UpdateSchedule

__all__ = ["SparseMomentum", "SparseMomentumState", "prune_count", "regrowth_counts", "snfs"]


class SparseMomentumState(typing.NamedTuple):
    """SNFS's state: the dense gradient's momentum ``M`` at every sparsified leaf (``None`` elsewhere)."""

    momentum: Params


def prune_count(active: jax.typing.ArrayLike, rate: jax.typing.ArrayLike) -> jax.Array:
    """``min(ceil(p n), n - 1)``: how many of a layer's ``n`` active entries leave (an int32, at least 0).

    ``ceil`` is the authors' rounding (``magnitude_prune``); the cap keeps one entry per layer.

    Example:
      >>> int(prune_count(10, 0.25)), int(prune_count(10, 1.0)), int(prune_count(10, 0.0))
      (3, 9, 0)
    """
    active = jnp.asarray(active, jnp.int32)
    pruned = jnp.ceil(jnp.asarray(rate, jnp.float32) * active.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(pruned, 0, jnp.maximum(active - 1, 0))


def regrowth_counts(shares: jax.Array, pruned: jax.Array, capacity: jax.Array) -> jax.Array:
    """Integer regrowth per layer: ``sum(pruned)`` split by ``shares``, each layer capped at ``capacity``.

    With ``D = sum_l d_l``, the real allocation is ``x_l = min(c_l, lambda s_l)`` with ``lambda`` such
    that ``sum_l x_l = D`` (water filling: the overflow of capped layers goes to the others in
    proportion to their shares). The counts are ``floor(x_l)`` plus one for the layers with the
    largest remainders ``x_l - floor(x_l)`` that have room (ties: the lower index), so that

    .. math::

        \\sum_l r_l = D, \\qquad 0 \\le r_l \\le c_l

    hold exactly whenever ``sum_l c_l >= D``, whatever the floating-point rounding. Shares that are
    negative or not finite count as 0; if none is positive, each layer regrows what it pruned.

    Args:
      shares: ``(L,)`` float shares (any scale: mean momentum magnitudes).
      pruned: ``(L,)`` int counts pruned per layer; their sum is the total to regrow.
      capacity: ``(L,)`` int free entries per layer after pruning.

    Returns:
      ``(L,)`` int32 regrowth counts.

    Example:
      >>> import jax.numpy as jnp
      >>> regrowth_counts(jnp.array([3.0, 1.0]), jnp.array([4, 4]), jnp.array([100, 100])).tolist()
      [6, 2]
      >>> regrowth_counts(jnp.array([3.0, 1.0]), jnp.array([4, 4]), jnp.array([5, 100])).tolist()
      [5, 3]
    """
    pruned = jnp.asarray(pruned, jnp.int32)
    capacity = jnp.asarray(capacity, jnp.int32)
    shares = jnp.asarray(shares, jnp.float32)
    total = jnp.sum(pruned)
    weights = jnp.where(jnp.isfinite(shares) & (shares > 0), shares, 0.0)
    weights = jnp.where(jnp.sum(weights) > 0, weights, pruned.astype(jnp.float32))
    room, target = capacity.astype(jnp.float32), total.astype(jnp.float32)

    def fill(capped):
        free = target - jnp.sum(jnp.where(capped, room, 0.0))
        weight = jnp.sum(jnp.where(capped, 0.0, weights))
        scale = jnp.where(weight > 0, free / jnp.where(weight > 0, weight, 1.0), 0.0)
        return jnp.where(capped, room, scale * weights)

    capped = jnp.zeros(shares.shape, bool)
    for _ in range(shares.shape[0]):  # each pass caps at least one more layer, or none from then on
        capped = capped | (fill(capped) >= room)
    share = jnp.maximum(fill(capped), 0.0)
    counts = jnp.clip(jnp.floor(share).astype(jnp.int32), 0, capacity)
    remainder = share - jnp.floor(share)
    # Settle the integer total exactly: the rounding (and float error) leaves it a few off D.
    missing = total - jnp.sum(counts)
    counts = counts + _distribute(jnp.maximum(missing, 0), capacity - counts, jnp.argsort(-remainder, stable=True))
    return counts - _distribute(jnp.maximum(-missing, 0), counts, jnp.argsort(remainder, stable=True))


def _distribute(amount: jax.Array, spare: jax.Array, order: jax.Array) -> jax.Array:
    """``amount`` units over layers with ``spare`` room each: one per layer in ``order``, then the rest greedily.

    The rest is empty unless ``amount`` exceeds the layers with room, which only float error (or
    layers without a share) can cause; ``sum(spare) >= amount`` makes the result sum to ``amount``.
    """
    room = spare[order]
    one = ((room > 0) & (jnp.cumsum(room > 0) <= amount)).astype(jnp.int32)
    left = room - one
    more = jnp.clip(amount - jnp.sum(one) - (jnp.cumsum(left) - left), 0, left)
    return jnp.zeros_like(spare).at[order].set(one + more)


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseMomentum(SparseAlgorithm):
    """SNFS: prune by ``|theta|``, regrow by ``|M|``, counts redistributed across layers by mean ``|M|``.

    See the module docstring for the rule and where it differs from the authors' code.

    Attributes:
      layout: which leaves are sparsified and their starting sparsities; its total count is kept
        exactly. Row-wise structures (N:M, constant fan-in) are refused.
      schedule: the mask-update grid.
      prune_rate: schedule ``p_t`` of the fraction of each layer's active entries pruned per update.
      momentum: ``beta`` of the momentum ``M_t = beta M_{t-1} + g_t`` (in ``[0, 1)``).
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (RigL's convention).
      regularizer: an optional penalty.
    """

    name: str = "snfs"
    layout: SparsityLayout
    schedule: UpdateSchedule
    prune_rate: Schedule
    momentum: float = 0.9
    skip_optimizer_on_update: bool = True
    regularizer: Regularizer | None = None

    fixed_counts: typing.ClassVar[bool] = False  # the layers' counts move; their total is exact

    def __post_init__(self):
        beta = real_scalar(self.momentum, "momentum", "a float in [0, 1)")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"momentum must be in [0, 1) (the paper: 0.9), got {self.momentum!r}.")
        object.__setattr__(self, "momentum", beta)
        if self.layout.row_wise:
            raise ValueError(
                f"snfs moves counts between layers, but the structure {self.layout.structure!r} fixes the count "
                "of every N:M group or neuron, so no layer's count can change: run snfs unstructured or with a "
                "whole-layer group structure (block, channel, input_channel, heads), or use rigl (any structure) "
                "or srigl (constant fan-in) for row-wise sparsity."
            )

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Uniformly random masks with exactly ``floor(S_l * N_l)`` zeros per layer."""
        return random_masks(key, params, self.plan(params))

    def init_state(self, params: Params, masks: Masks) -> SparseMomentumState:
        """``M = 0`` at every sparsified leaf, of its shape and at least float32."""
        del masks
        leaves = [
            None if plan is None else jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32))
            for plan, p in zip(self.plan(params), jax.tree.leaves(params), strict=True)
        ]
        return SparseMomentumState(masks_from_leaves(params, leaves))

    def observe(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, state: SparseMomentumState
    ) -> SparseMomentumState:
        """``M <- beta M + g`` with the dense gradient, on every step."""
        del masks, step
        if grads is None:
            raise ValueError("snfs keeps the momentum of the dense gradient: pass grads to update (sparsify does).")
        momenta = [
            None if m is None else self.momentum * m + g.astype(m.dtype)
            for m, g in zip(mask_leaves(params, state.momentum), grad_leaves(params, grads), strict=True)
        ]
        return SparseMomentumState(masks_from_leaves(params, momenta))

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Prune ``p_t`` of each layer by ``|theta|``, regrow the total by ``|M|``, shared by mean ``|M|``."""
        del grads  # already in the momentum (observe runs first)
        plans = self.plan(params)
        pool = [i for i, plan in enumerate(plans) if plan is not None and plan.zeros > 0]
        new_leaves = list(mask_leaves(params, masks))
        if not pool:  # every sparsified layer saturated to dense
            return masks, state
        param_leaves, momenta = jax.tree.leaves(params), mask_leaves(params, state.momentum)
        rate = self.prune_rate(step)
        kept, pruned, shares, capacity, grow_scores, grow_seeds = [], [], [], [], [], []
        for i in pool:
            plan, mask = plans[i], new_leaves[i]
            keep_key, grow_key = jax.random.split(layer_key(key, i))
            magnitude = jnp.abs(momenta[i])
            active = jnp.sum(mask, dtype=jnp.int32)
            dropped = prune_count(active, rate)
            keep = plan.structure.select(
                plan.structure.group_scores(jnp.abs(param_leaves[i])),
                active - dropped,
                candidates=mask,
                tie_seed=jax.random.bits(keep_key, (), jnp.uint32),
            )
            on = plan.structure.expand(mask, plan.shape)
            n_weights = jnp.maximum(active.astype(jnp.float32) * plan.group_size, 1.0)
            kept.append(keep)
            pruned.append(dropped)
            shares.append(jnp.sum(jnp.where(on, magnitude, 0.0), dtype=jnp.float32) / n_weights)
            capacity.append(plan.size - (active - dropped))
            grow_scores.append(plan.structure.group_scores(magnitude))
            grow_seeds.append(jax.random.bits(grow_key, (), jnp.uint32))
        regrow = regrowth_counts(jnp.stack(shares), jnp.stack(pruned), jnp.stack(capacity))
        for j, i in enumerate(pool):
            grown = plans[i].structure.select(grow_scores[j], regrow[j], candidates=~kept[j], tie_seed=grow_seeds[j])
            new_leaves[i] = kept[j] | grown
        return masks_from_leaves(params, new_leaves), state

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``2 f_S + f_D`` per step up to the last mask update, ``3 f_S`` after.

        The momentum needs the dense weight gradient on every step (Evci et al. 2020 count SNFS at
        ``2 f_S + f_D`` per step); once the last update is done the momentum feeds nothing, and a
        step is an ordinary sparse one. ``f_S`` is taken at each layer's final density.
        """
        del trainable_density, names, plans
        sparse, dense = float(forward_density @ flops), float(flops.sum())
        updates = np.flatnonzero(np.asarray(self.is_update_step(np.arange(total_steps))))
        with_momentum = int(updates[-1]) + 1 if updates.size else 0
        total = (2.0 * sparse + dense) * with_momentum + 3.0 * sparse * (total_steps - with_momentum)
        return total / (3.0 * dense * total_steps)


def snfs(
    sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 100,
    begin_step: int = 0,
    end_step: int | None = None,
    prune_rate: float | Schedule = 0.5,
    prune_rate_decay: str = "cosine",
    momentum: float = 0.9,
    skip_optimizer_on_update: bool = True,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> SparseMomentum:
    """SNFS, sparse momentum (Dettmers & Zettlemoyer 2019): prune by ``|theta|``, regrow by gradient momentum.

    Every ``update_every`` steps in ``[begin_step, end_step]`` each layer prunes ``ceil(p_t n_l)`` of
    its ``n_l`` active weights by ``|theta|`` (keeping at least one), and the network regrows the
    same total where the momentum ``|M|`` of the dense gradient is largest, split across layers in
    proportion to each layer's mean ``|M|`` over its active weights. The global count is exact.

    Args:
      sparsity: global sparsity in ``[0, 1)`` (the starting per-layer sparsities follow ``distribution``).
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      update_every: steps between mask updates (the paper: once per epoch).
      begin_step: first step that updates masks.
      end_step: last step that may update masks (needed by the cosine decay).
      prune_rate: ``p`` (the paper: 0.5), or a schedule ``step -> p_t`` with values in ``[0, 1]``.
      prune_rate_decay: ``"cosine"`` (from ``p`` at ``begin_step`` to 0 at ``end_step``) or ``"constant"``.
      momentum: ``beta`` of ``M_t = beta M_{t-1} + g_t`` (the paper: 0.9).
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (RigL's convention).
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields (row-wise structures,
        N:M and constant fan-in, are refused).

    Returns:
      The algorithm.

    Raises:
      ValueError: a prune rate outside ``[0, 1]``, a momentum outside ``[0, 1)``, the cosine decay
        without ``end_step``, or a row-wise structure.

    Example:
      >>> algo = snfs(0.9, update_every=100, end_step=1000)
      >>> algo.name, round(float(algo.prune_rate(0)), 6), round(float(algo.prune_rate(500)), 6)
      ('snfs', 0.5, 0.25)

    References:
      Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training without Losing
      Performance", arXiv:1907.04840, 2019.
    """
    if not callable(prune_rate):
        rate = real_scalar(prune_rate, "prune_rate", "a float in [0, 1]")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"prune_rate must be in [0, 1] (the paper: 0.5), got {prune_rate!r}.")
        if prune_rate_decay not in DROP_FRACTION_DECAYS:
            raise ValueError(
                f"unknown prune_rate_decay {prune_rate_decay!r}; choose 'cosine' or 'constant', or pass a schedule "
                "callable as prune_rate."
            )
        if prune_rate_decay == "cosine" and end_step is None:
            raise ValueError(
                "snfs's cosine prune-rate decay needs end_step (the step of the last mask update); pass "
                "end_step=..., or prune_rate_decay='constant'."
            )
    schedule = UpdateSchedule(begin_step, end_step, update_every)
    return SparseMomentum(
        layout=make_layout(sparsity, distribution, layout_options),
        schedule=schedule,
        prune_rate=drop_fraction_schedule(prune_rate, prune_rate_decay, schedule),
        momentum=momentum,
        skip_optimizer_on_update=skip_optimizer_on_update,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> SparseMomentum:
    return snfs(
        settings.sparsity,
        prune_rate=settings.options["snfs_prune_rate"],
        momentum=settings.options["snfs_momentum"],
        **settings.factory_keywords(),
    )


PRUNE_RATE = Option(
    "snfs_prune_rate",
    float,
    0.5,
    "snfs: fraction of each layer's active weights pruned per update, cosine-decayed (Dettmers & Zettlemoyer: 0.5)",
    valid=lambda value, settings: 0.0 <= value <= 1.0,
    rule="must be in [0, 1], e.g. 0.5",
)
MOMENTUM = Option(
    "snfs_momentum",
    float,
    0.9,
    "snfs: beta of the dense gradient's momentum M = beta M + g that regrowth ranks by (0.9)",
    valid=lambda value, settings: 0.0 <= value < 1.0,
    rule="must be in [0, 1), e.g. 0.9",
)
register(
    Method(
        "snfs",
        _build,
        "prune the smallest |w|, regrow by gradient momentum across layers (Dettmers & Zettlemoyer 2019)",
        (PRUNE_RATE, MOMENTUM),
        accepts_init=True,
    )
)
