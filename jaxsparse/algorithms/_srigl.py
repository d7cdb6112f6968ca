"""SRigL: RigL at constant fan-in, with neuron ablation (Lasby et al., ICLR 2024).

Every neuron (a column of a dense kernel, a filter of a conv) of a sparsified layer keeps exactly
``k`` active inputs (:class:`~jaxsparse.masks.FanIn`). At each update, with drop fraction ``f_t``
(RigL's cosine decay from 0.3):

1. **Saliency.** Across the whole layer, with ``a`` active weights and ``d = floor(f_t a)``, the
   *kept* set ``K`` is the ``a - d`` largest ``|theta|`` among the active weights and the *grown* set
   ``G`` the ``d`` largest ``|g|`` among the others (RigL's layer-wide choice). A neuron's salient
   weights are its entries in ``K`` or ``G``.
2. **Ablation.** A neuron with fewer than ``max(1, floor(gamma_sal * k))`` salient weights is
   ablated (all its inputs off). At least ``floor(B / n_in) + 1`` neurons stay (the most salient),
   so that the fan-in never has to exceed the dense one; ablated neurons may come back at a later
   update. The last sparsified layer (the classifier) is never ablated.
3. **Redistribution.** The ``n`` surviving neurons share the layer's budget ``B = floor((1 - S_l) N_l)``:
   each gets ``k' = min(floor(B / n), n_in)`` inputs, so the layer's count is ``n k' <= B`` (``k``
   itself while no neuron is ablated).
4. **Regrowth per neuron.** A surviving neuron keeps its weights in ``K`` (at most ``k'``, its
   largest ``|theta|``) and regrows up to exactly ``k'`` from the largest ``|g|`` among its other
   inputs; grown weights start at 0.

With ``gamma_sal = 0`` no neuron is ever ablated and the algorithm is RigL at constant fan-in
(:func:`~jaxsparse.algorithms.drop_and_regrow`: layer-wide drop, per-neuron regrowth, as the
reference code ``calgaryml/condensed-sparsity``, ``rigl_constant_fan.py``, does). Where the
reference trims a neuron that keeps more than ``k`` to its first surviving entries in memory order,
this keeps its largest ``|theta|``.

References:
  Lasby, Golubeva, Evci, Nica, Ioannou, "Dynamic Sparse Training with Structured Sparsity",
  ICLR 2024 (``gamma_sal = 0.3``; 0.95 for ViTs).
  Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners", ICML 2020.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm, layer_key
from jaxsparse.algorithms._drop_and_grow import DROP_FRACTION, dense_gradient_update_cost, drop_count, grad_leaves
from jaxsparse.algorithms._factory_options import drop_fraction_schedule, make_layout
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import (
    FanIn,
    LayerPlan,
    Masks,
    Params,
    SparsityLayout,
    mask_leaves,
    masks_from_leaves,
    natural_key,
    random_masks,
    structures_of,
)
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import Schedule, UpdateSchedule
from jaxsparse.selection import top_k_mask

__all__ = ["GAMMA_SAL", "StructuredRigL", "srigl"]

GAMMA_SAL = 0.3
"""The paper's default saliency threshold (0.95 for ViTs)."""


def _seed(key: jax.Array) -> jax.Array:
    return jax.random.bits(key, (), jnp.uint32)


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class StructuredRigL(SparseAlgorithm):
    """RigL at constant fan-in with neuron ablation (see the module docstring).

    Attributes:
      layout: the layout; every sparsified leaf must have the :class:`~jaxsparse.masks.FanIn` structure.
      schedule: the mask-update grid.
      drop_fraction: schedule ``f_t``.
      gamma_sal: the saliency threshold, a fraction of ``k`` (0 disables ablation).
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (RigL's reference).
      regularizer: an optional penalty.
    """

    name: str = "srigl"
    layout: SparsityLayout
    schedule: UpdateSchedule
    drop_fraction: Schedule
    gamma_sal: float = GAMMA_SAL
    skip_optimizer_on_update: bool = True
    regularizer: Regularizer | None = None

    fixed_counts: typing.ClassVar[bool] = False  # ablation redistributes a layer's count over fewer neurons

    def __post_init__(self):
        if not 0.0 <= self.gamma_sal <= 1.0:
            raise ValueError(f"gamma_sal must be in [0, 1] (the paper: 0.3, 0.95 for ViTs), got {self.gamma_sal!r}.")
        if not all(isinstance(s, FanIn) for s in structures_of(self.layout.structure)):
            raise ValueError(
                f"srigl needs the constant fan-in structure on every layer, got {self.layout.structure!r}: "
                "build it with jaxsparse.srigl(...), which sets structure=FanIn() (on the command line, leave "
                "--structure out or pass fan_in)."
            )

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Uniformly random masks with exactly ``k`` inputs per neuron."""
        return random_masks(key, params, self.plan(params))

    def _layer(self, plan: LayerPlan, param, grad, mask, fraction, key, ablate: bool) -> jax.Array:
        """One layer's new mask (steps 1-4 of the module docstring)."""
        n_in, n_out = plan.row_size, plan.rows
        keep_key, grow_key, trim_key, regrow_key, alive_key = (_seed(k) for k in jax.random.split(key, 5))
        magnitude, growth = jnp.abs(param), jnp.abs(grad)
        active = jnp.sum(mask, dtype=jnp.int32)
        dropped = drop_count(active, fraction)
        kept = top_k_mask(magnitude, active - dropped, candidates=mask, tie_seed=keep_key)  # RigL's keep set
        if ablate:
            grown = top_k_mask(growth, dropped, candidates=~kept, tie_seed=grow_key)  # RigL's grow set
            salient = plan.structure.row_sums(kept | grown)
            k = jnp.max(plan.structure.row_sums(mask))
            threshold = jnp.maximum(1, jnp.floor(self.gamma_sal * k.astype(jnp.float32)).astype(jnp.int32))
            budget = math.floor((1.0 - plan.sparsity) * plan.size)
            survivors = jnp.maximum(jnp.sum(salient >= threshold), min(budget // n_in + 1, n_out))
            alive = top_k_mask(salient.astype(jnp.float32), survivors, tie_seed=alive_key)
            n_alive = jnp.sum(alive, dtype=jnp.int32)
            fan_in = jnp.where(n_alive == n_out, plan.row_active, jnp.minimum(budget // n_alive, n_in))
            kept = kept & jnp.broadcast_to(alive, kept.shape)  # neurons are the last axis
            # A returning neuron can lower k': no neuron keeps more than k' (its largest |theta|).
            kept_per_neuron = jnp.minimum(plan.structure.row_sums(kept), fan_in)
            kept = plan.structure.select(magnitude, kept_per_neuron, candidates=kept, tie_seed=trim_key)
        else:  # every neuron keeps at most its k: no trimming
            alive, fan_in = jnp.ones((n_out,), bool), plan.row_active
            kept_per_neuron = plan.structure.row_sums(kept)
        regrow = jnp.where(alive, fan_in - kept_per_neuron, 0)
        return kept | plan.structure.select(growth, regrow, candidates=~kept, tie_seed=regrow_key)

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Saliency, ablation, redistribution, then per-neuron drop and grow, layer by layer."""
        if grads is None:
            raise ValueError("srigl grows by the dense gradient: pass grads to update (sparsify does).")
        plans = self.plan(params)
        named = [i for i, plan in enumerate(plans) if plan is not None]
        last = max(named, key=lambda i: natural_key(plans[i].name))
        fraction = self.drop_fraction(step)
        param_leaves, gradients = jax.tree.leaves(params), grad_leaves(params, grads)
        current = mask_leaves(params, masks)
        new_leaves = list(current)
        for index in named:
            if plans[index].zeros == 0:  # a layer the distribution saturated to dense stays dense
                continue
            new_leaves[index] = self._layer(
                plans[index],
                param_leaves[index],
                gradients[index],
                current[index],
                fraction,
                layer_key(key, index),
                ablate=self.gamma_sal > 0 and index != last,
            )
        return masks_from_leaves(params, new_leaves), state

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """RigL's: ``3 f_S`` per step, ``2 f_S + f_D`` on mask-update steps."""
        del trainable_density, names, plans
        return dense_gradient_update_cost(self, flops, forward_density, total_steps)


def srigl(
    sparsity: float,
    *,
    gamma_sal: float = GAMMA_SAL,
    distribution: str = "erk",
    update_every: int = 100,
    begin_step: int = 0,
    end_step: int | None = None,
    drop_fraction: float | Schedule = 0.3,
    drop_fraction_decay: str = "cosine",
    skip_optimizer_on_update: bool = True,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> StructuredRigL:
    """SRigL (Lasby et al. 2024): RigL at constant fan-in, ablating neurons with few salient weights.

    Args:
      sparsity: global sparsity in ``[0, 1)`` (laid out by ``distribution``, then ``k`` per neuron).
      gamma_sal: saliency threshold as a fraction of ``k`` (0.3; the paper uses 0.95 for ViTs; 0
        disables ablation).
      distribution, update_every, begin_step, end_step, drop_fraction, drop_fraction_decay,
        skip_optimizer_on_update, regularizer: as for :func:`~jaxsparse.algorithms.rigl`.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields (the structure is
        always :class:`~jaxsparse.masks.FanIn`).

    Example:
      >>> algo = srigl(0.9, end_step=1000)
      >>> algo.name, algo.gamma_sal, algo.layout.structure
      ('srigl', 0.3, FanIn())
    """
    layout_options = {"structure": FanIn(), **layout_options}
    schedule = UpdateSchedule(begin_step, end_step, update_every)
    return StructuredRigL(
        layout=make_layout(sparsity, distribution, layout_options),
        schedule=schedule,
        drop_fraction=drop_fraction_schedule(drop_fraction, drop_fraction_decay, schedule),
        gamma_sal=gamma_sal,
        skip_optimizer_on_update=skip_optimizer_on_update,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> StructuredRigL:
    return srigl(
        settings.sparsity,
        gamma_sal=settings.options["gamma_sal"],
        drop_fraction=settings.options["drop_fraction"],
        **settings.factory_keywords(),
    )


GAMMA_SAL_OPTION = Option(
    "gamma_sal",
    float,
    GAMMA_SAL,
    "srigl: ablate neurons with fewer than gamma_sal * k salient weights (Lasby et al. 2024: 0.3; 0 disables)",
    valid=lambda value, settings: 0.0 <= value <= 1.0,
    rule="must be in [0, 1], e.g. 0.3",
)
register(
    Method(
        "srigl",
        _build,
        "RigL at constant fan-in with neuron ablation (Lasby et al. 2024)",
        (DROP_FRACTION, GAMMA_SAL_OPTION),
        default_structure="fan_in",
    )
)
