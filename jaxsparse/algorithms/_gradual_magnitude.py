"""Gradual pruning (Zhu & Gupta 2017) by magnitude, or by a criterion estimated from the training gradients.

Training starts dense (or at ``initial_sparsity``) and, at each step of the update grid, prunes
the active entries with the lowest *criterion* until the scheduled sparsity ``s_t`` is reached;
pruned weights stay pruned. With a per-layer distribution, layer ``l`` with final sparsity ``S_l``
follows the global ramp proportionally, ``s_{l,t} = S_l * s_t / S``, so with
``initial_sparsity = 0`` every layer follows the polynomial ramp towards its own target and lands
exactly on ``floor(S_l N_l)`` zeros at ``end_step``. With ``scope="global"`` one threshold is
shared by all layers and only the total count is fixed.

**Criteria.** ``g_t`` is step ``t``'s (minibatch) gradient ``dL/d(theta * m)``, ``theta`` the
weights at the pruning step, and a group ``G`` is one mask entry (one weight when unstructured):

* ``"magnitude"`` (the default): ``|theta|``, a group's L2 norm ``||theta_G||_2`` (Zhu & Gupta).
* ``"l1"``: a group's L1 norm ``sum_{q in G} |theta_q|``, the filter criterion of Li, Kadav, Durdanovic,
  Samet, Graf (ICLR 2017); the same as ``"magnitude"`` for single weights.
* ``"taylor"``: first-order Taylor importance (Molchanov, Mallya, Tyree, Frosio, Kautz, CVPR 2019),
  the squared first-order change of the loss when the group is removed,
  ``I_G(t) = (sum_{q in G} g_{t,q} theta_{t,q})^2`` (per weight ``(g theta)^2``; a group's importance
  is that of a gate scaling it, so its terms are summed before squaring), averaged over the steps
  since the last prune, as the paper accumulates importance over the minibatches between pruning
  steps.
* ``"obd"``: Optimal Brain Damage's saliency ``1/2 h_qq theta_q^2`` (LeCun, Denker, Solla 1990) with
  the diagonal Hessian ``h_qq`` replaced by the Fisher diagonal ``F_qq``, summed over the group:
  the diagonal approximation of removing the whole group (cross terms ignored). ``F`` is a running
  average of the *squared minibatch gradients* ``g_t^2`` since the last prune: the minibatch, not
  the per-example, empirical Fisher. For a batch of ``B`` i.i.d. examples
  ``E[g_t^2] = (E g)^2 + Var(g) / B``, while the per-example Fisher is ``(E g)^2 + Var(g)``, so
  this estimate shrinks the variance part by ``1 / B``; per-example gradients are what an optax
  transformation never sees.

Both gradient criteria keep their average as the algorithm's state (:class:`GradualState`), updated
by ``observe`` on every step (so it includes the pruning step's own gradient) and reset to zero
after each prune; at ``initial_sparsity > 0`` they have no gradient to score the initial masks by,
so they start dense.

**Which criteria make sense during training.** A criterion fits here when the step's parameters
and gradient suffice to estimate it: the magnitude, and the Taylor and OBD saliencies from the
gradients training computes anyway (on the active weights only: a pruned weight is 0 and never a
candidate, so the training cost is the same as magnitude pruning's). Criteria that need an inverse
Hessian or Fisher from per-example gradients (OBS, WoodFisher) or a layer's inputs on calibration
data (SparseGPT, Wanda) are one-shot: they live in :mod:`jaxsparse.one_shot`, and their masks (and
OBS's updated weights) are handed to ``sparsify(inner, algo, key=..., masks=...)`` for fine-tuning.

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression", 2017.
  Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network Pruning",
  CVPR 2019.
  LeCun, Denker, Solla, "Optimal Brain Damage", NeurIPS 1990.
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm
from jaxsparse.algorithms._drop_and_grow import grad_leaves
from jaxsparse.algorithms._factory_options import check_pooled_scope, make_layout
from jaxsparse.algorithms._magnitude_pruning import (
    SCOPES,
    first_order,
    prune_by_magnitude,
    prune_by_scores,
    ramp_training_flops,
    score_dtype,
    sparsified_map,
    sparsity_in_effect,
)
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import LayerPlan, Masks, Params, SparsityLayout, mask_leaves
from jaxsparse.masks._scored import group_scores
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import Schedule, UpdateSchedule, polynomial_sparsity

__all__ = ["GRADUAL_CRITERIA", "GradualMagnitude", "GradualState", "gradual_magnitude"]

GRADUAL_CRITERIA = ("magnitude", "l1", "taylor", "obd")
"""What gradual pruning ranks the active entries by (see the module docstring)."""

_MAGNITUDES = ("magnitude", "l1")
"""The criteria read from the weights alone (no state, no gradients)."""


def _taylor_term(plan: LayerPlan, param: jax.Array, grad: jax.Array) -> jax.Array:
    """``(sum_{q in G} g_q theta_q)^2`` per group: one step's first-order Taylor importance."""
    return jnp.square(first_order(plan, param, grad))


def _squared_gradient(plan: LayerPlan, param: jax.Array, grad: jax.Array) -> jax.Array:
    """``g^2`` per weight: one step's sample of the (minibatch) Fisher diagonal."""
    del plan
    return jnp.square(grad.astype(score_dtype(param)))


def _taylor_score(plan: LayerPlan, param: jax.Array, average: jax.Array) -> jax.Array:
    """The averaged importance itself: it already holds the weights of every step it saw."""
    del plan, param
    return average


def _obd_score(plan: LayerPlan, param: jax.Array, fisher: jax.Array) -> jax.Array:
    """``sum_{q in G} 1/2 F_qq theta_q^2``: OBD's saliency of removing the group."""
    return group_scores(plan, 0.5 * fisher * jnp.square(param.astype(fisher.dtype)), summed=True)


# criterion -> (the per-step term, whether it is kept per weight (else per group), the prune-time score)
_STATISTICS = {
    "taylor": (_taylor_term, False, _taylor_score),
    "obd": (_squared_gradient, True, _obd_score),
}


class GradualState(typing.NamedTuple):
    """A gradient criterion's running average since the last prune (``()`` for magnitude).

    Attributes:
      average: at every sparsified leaf, the mean of the per-step term since the last prune (Taylor:
        the importance per group; OBD: the squared gradient per weight); ``None`` at dense leaves.
      count: how many steps the average holds (an int32 scalar).
    """

    average: Params
    count: jax.Array


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class GradualMagnitude(SparseAlgorithm):
    """Prune by a criterion (``|theta|`` by default) on a sparsity ramp ``s_t``.

    Attributes:
      layout: the final layout (sparsity ``S`` per layer).
      schedule: the pruning grid.
      sparsity_schedule: ``s_t``, the global sparsity at step ``t`` (ends at ``layout.sparsity``).
      initial_sparsity: ``s_{t_0}``; the masks at step 0 keep the largest weights at this level.
      scope: ``"layer"`` (each layer follows its own target) or ``"global"`` (one threshold).
      criterion: ``"magnitude"``, ``"l1"``, ``"taylor"`` or ``"obd"`` (see the module docstring).
      skip_optimizer_on_update: apply no optimizer step on pruning steps.
      regularizer: an optional penalty.
    """

    name: str = "gradual_magnitude"
    layout: SparsityLayout
    schedule: UpdateSchedule
    sparsity_schedule: Schedule
    initial_sparsity: float = 0.0
    scope: str = "layer"
    criterion: str = "magnitude"
    skip_optimizer_on_update: bool = False
    regularizer: Regularizer | None = None

    fixed_counts: typing.ClassVar[bool] = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose 'layer' or 'global'.")
        check_pooled_scope(self.scope, self.layout, "scope")
        if self.criterion not in GRADUAL_CRITERIA:
            raise ValueError(
                f"unknown criterion {self.criterion!r}; choose one of {', '.join(GRADUAL_CRITERIA)}. One-shot criteria "
                "(OBS/WoodFisher, SparseGPT, Wanda) need calibration data: compute their masks with "
                "jaxsparse.one_shot and hand them to sparsify(..., masks=...)."
            )
        if self.criterion not in _MAGNITUDES and self.initial_sparsity > 0:
            raise ValueError(
                f"criterion={self.criterion!r} scores weights from training gradients, which step 0 does not have, "
                f"so initial_sparsity={self.initial_sparsity!r} cannot be chosen by it: start dense "
                "(initial_sparsity=0), or hand initial masks to sparsify(..., masks=...)."
            )

    def _prune(self, params: Params, masks: Masks | None, sparsity, at_end, key: jax.Array) -> Masks:
        """Keep the largest ``|theta|`` (L2 or, for ``"l1"``, L1 group norm; among ``masks``) at ``sparsity``."""
        if self.criterion == "magnitude":
            return prune_by_magnitude(self.layout, params, masks, sparsity, at_end, key, self.scope)
        scores = sparsified_map(
            lambda plan, p: group_scores(plan, jnp.abs(p).astype(score_dtype(p)), summed=True),
            params,
            self.plan(params),
        )
        return prune_by_scores(self.layout, params, scores, masks, sparsity, at_end, key, self.scope)

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """The largest-magnitude weights at ``initial_sparsity`` (all weights when it is 0)."""
        return self._prune(params, None, self.initial_sparsity, False, key)

    def init_state(self, params: Params, masks: Masks) -> GradualState | tuple[()]:
        """``()`` for magnitude; else a zero average (per group or per weight, at least float32) of 0 steps."""
        del masks
        if self.criterion in _MAGNITUDES:
            return ()
        per_weight = _STATISTICS[self.criterion][1]
        average = sparsified_map(
            lambda plan, p: jnp.zeros(plan.shape if per_weight else plan.mask_shape, score_dtype(p)),
            params,
            self.plan(params),
        )
        return GradualState(average, jnp.zeros((), jnp.int32))

    def observe(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, state: AlgorithmState
    ) -> AlgorithmState:
        """Adds this step's term to the running average: ``a <- a + (x_t - a) / (n + 1)``, ``n <- n + 1``."""
        del masks, step
        if self.criterion in _MAGNITUDES:
            return state
        if grads is None:
            raise ValueError(
                f"criterion={self.criterion!r} averages the training gradients: pass grads to update (sparsify does)."
            )
        term = _STATISTICS[self.criterion][0]
        count = state.count + 1
        weight = 1.0 / count.astype(jnp.float32)

        def step(plan, param, average, grad):
            return average + (term(plan, param, grad) - average) * weight.astype(average.dtype)

        average = sparsified_map(
            step, params, self.plan(params), mask_leaves(params, state.average), grad_leaves(params, grads)
        )
        return GradualState(average, count)

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Keep the best-scoring active entries at sparsity ``s_t``; a gradient criterion restarts its average."""
        del grads  # a gradient criterion already averaged them (observe runs first)
        at_end = jnp.asarray(step) >= self.schedule.end_step
        sparsity = self.sparsity_schedule(step)
        if self.criterion in _MAGNITUDES:
            return self._prune(params, masks, sparsity, at_end, key), state
        score = _STATISTICS[self.criterion][2]
        scores = sparsified_map(score, params, self.plan(params), mask_leaves(params, state.average))
        pruned = prune_by_scores(self.layout, params, scores, masks, sparsity, at_end, key, self.scope)
        return pruned, self.init_state(params, pruned)

    def _sparsity_in_effect(self, total_steps: int) -> np.ndarray:
        """The global sparsity of the masks the forward pass of each step ``0 .. total_steps-1`` sees.

        The masks start at ``initial_sparsity``; an update at step ``u`` (computed after step ``u``'s
        gradients) sets them to the ramp's ``s_u``, which steps ``u + 1, ...`` then use.
        """
        steps = np.arange(total_steps)
        updates = np.asarray(self.is_update_step(steps))
        ramp = np.asarray(self.sparsity_schedule(steps), dtype=np.float64)
        return sparsity_in_effect(updates, ramp, self.initial_sparsity)

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``3 f_S(t)`` averaged over the steps, at the sparsity the ramp set at the last update before ``t``.

        Each layer ``l`` is taken at sparsity ``S_l s_t / S``, with ``S_l`` its final sparsity in the
        given masks (exact for ``scope="layer"``, the proportional estimate for ``scope="global"``;
        Zhu & Gupta 2017). The gradient criteria read the weight gradient on the active weights
        only, which a sparse backward pass computes anyway: the same cost.
        """
        del trainable_density, names, plans
        return ramp_training_flops(flops, forward_density, self.layout.sparsity, self._sparsity_in_effect(total_steps))


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
    criterion: str = "magnitude",
    skip_optimizer_on_update: bool = False,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> GradualMagnitude:
    """Gradual pruning on Zhu & Gupta's polynomial ramp, by magnitude or a gradient criterion.

    Every ``update_every`` steps from ``begin_step`` to ``end_step`` the active entries with the
    lowest criterion are pruned to the scheduled sparsity
    ``s_t = S + (s_i - S)(1 - (t - t_0)/(t_end - t_0))^power``.

    Args:
      sparsity: final global sparsity ``S`` in ``[0, 1)``.
      distribution: how ``S`` is split over layers (ignored by ``scope="global"``).
      begin_step: ``t_0``, the first pruning step.
      end_step: ``t_end``, the step at which ``S`` is reached.
      update_every: ``Delta t`` between pruning steps.
      initial_sparsity: ``s_i``; training starts from the top weights at this sparsity (magnitude
        only: the gradient criteria have no gradient at step 0).
      power: exponent of the ramp (3 in the paper).
      scope: ``"layer"`` (each layer reaches its own target) or ``"global"`` (one threshold).
      criterion: ``"magnitude"`` (``|theta|``), ``"l1"`` (a group's ``sum |theta|``, Li et al. 2017),
        ``"taylor"`` (``(sum g theta)^2`` averaged since the last prune, Molchanov et al. 2019) or
        ``"obd"`` (``1/2 F theta^2`` with ``F`` the running mean of ``g^2``, LeCun et al. 1990); see the
        module docstring.
      skip_optimizer_on_update: apply no optimizer step on pruning steps.
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Raises:
      ValueError: an unknown criterion or scope, or ``initial_sparsity`` outside ``[0, S]`` (above 0
        with a gradient criterion).

    Example:
      >>> algo = gradual_magnitude(0.9, begin_step=0, end_step=1000)
      >>> round(float(algo.sparsity_schedule(500)), 4)
      0.7875
      >>> gradual_magnitude(0.9, end_step=1000, criterion="taylor").criterion
      'taylor'

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017.
      Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019.
      LeCun, Denker, Solla, "Optimal Brain Damage", NeurIPS 1990.
    """
    layout = make_layout(sparsity, distribution, layout_options)
    sparsity = layout.sparsity  # None under N:M: the structure's
    if not 0.0 <= initial_sparsity <= sparsity:
        raise ValueError(f"initial_sparsity={initial_sparsity!r} must be in [0, sparsity={sparsity}].")
    return GradualMagnitude(
        layout=layout,
        schedule=UpdateSchedule(begin_step, end_step, update_every),
        sparsity_schedule=polynomial_sparsity(sparsity, begin_step, end_step, initial_sparsity, power),
        initial_sparsity=initial_sparsity,
        scope=scope,
        criterion=criterion,
        skip_optimizer_on_update=skip_optimizer_on_update,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> GradualMagnitude:
    return gradual_magnitude(settings.sparsity, criterion=settings.options["criterion"], **settings.factory_keywords())


CRITERION = Option(
    "criterion",
    str,
    "magnitude",
    "gradual_magnitude: what prunes: magnitude |w|, l1 (a group's sum |w|), taylor (g w)^2 or obd F w^2/2, "
    "gradients averaged between prunes",
    valid=lambda value, settings: value in GRADUAL_CRITERIA,
    rule=f"must be one of {', '.join(GRADUAL_CRITERIA)}",
)
register(
    Method(
        "gradual_magnitude",
        _build,
        "prune the smallest |w| (or Taylor / OBD saliency) on the cubic ramp (Zhu & Gupta 2017)",
        (CRITERION,),
    )
)
