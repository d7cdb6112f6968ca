"""The worked example of docs/design.md, "How to add an algorithm": averaged-gradient growth.

A drop-and-grow rule whose growth criterion is an exponential moving average of the dense gradient's
magnitude, ``a_t = beta a_{t-1} + (1 - beta) |g_t|``, kept as algorithm state and updated on every
step, instead of RigL's one-step ``|g_t|``. Drop is by ``|theta|``. This module is all it takes;
``tests/conftest.py`` registers it with one line, and the conformance tests and the CLI test then
run it like a built-in algorithm.
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp

import jaxsparse as jsp
from jaxsparse.algorithms import Method, Settings, SparseAlgorithm, drop_and_regrow, drop_count, layer_key
from jaxsparse.masks import SparsityLayout, mask_leaves, masks_from_leaves, random_masks
from jaxsparse.schedules import UpdateSchedule, constant_drop_fraction


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class AveragedGradientGrowth(SparseAlgorithm):
    """Drop the smallest ``|theta|``, grow the largest moving average of ``|g|``."""

    name: str = "averaged_growth"
    layout: SparsityLayout
    schedule: UpdateSchedule
    drop_fraction: float = 0.3
    beta: float = 0.9
    skip_optimizer_on_update: bool = True
    regularizer: None = None

    def init_masks(self, params, key):
        return random_masks(key, params, self.plan(params))

    def init_state(self, params, masks):
        """The average of ``|g|``, mirroring the params (so it is sharded like them)."""
        return jax.tree.map(jnp.zeros_like, params)

    def observe(self, params, masks, grads, step, state):
        return jax.tree.map(lambda a, g: self.beta * a + (1 - self.beta) * jnp.abs(g), state, grads)

    def update_rule(self, params, masks, grads, step, key, state):
        new = []
        for i, (plan, p, m, a) in enumerate(
            zip(
                self.plan(params),
                jax.tree.leaves(params),
                mask_leaves(params, masks),
                jax.tree.leaves(state),
                strict=True,
            )
        ):
            if plan is None or plan.zeros == 0:
                new.append(m)
                continue
            keep_seed, grow_seed = jax.random.bits(layer_key(key, i), (2,), jnp.uint32)
            # drop_and_regrow keeps the rule exact at any structure (blocks, N:M groups, constant fan-in).
            dropped = drop_count(plan.active, constant_drop_fraction(self.drop_fraction)(step))
            magnitude, average = plan.structure.group_scores(jnp.abs(p)), plan.structure.group_scores(a)
            new.append(drop_and_regrow(plan, m, magnitude, average, dropped, keep_seed, grow_seed))
        return masks_from_leaves(params, new), state

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans):
        """The average needs the dense gradient on every step: ``(2 f_S + f_D) / 3 f_D``."""
        del trainable_density, total_steps, names, plans
        return float((2 * (forward_density @ flops) + flops.sum()) / (3 * flops.sum()))


def averaged_growth(
    sparsity: float, *, update_every: int = 100, begin_step: int = 0, end_step: int | None = None, **layout_options
) -> AveragedGradientGrowth:
    """The factory users call: the layout from ``sparsity`` and ``layout_options``, and the update grid."""
    return AveragedGradientGrowth(
        layout=jsp.SparsityLayout(sparsity, **layout_options),
        schedule=UpdateSchedule(begin_step, end_step, update_every),
    )


def _build(settings: Settings) -> AveragedGradientGrowth:
    return averaged_growth(settings.sparsity, **settings.factory_keywords())


METHOD = Method("averaged_growth", _build, "grow where the moving average of |grad| is largest")
