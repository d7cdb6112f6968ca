"""Movement pruning (Sanh, Wolf, Rush 2020): while fine-tuning, keep the weights that move away from zero.

**Scores.** Every sparsified weight (every group, under a structure) has a score ``S``, the
algorithm's state, starting at ``S = 0``. The forward pass sees ``W' = W * M`` with the mask ``M``
chosen from ``S``. The paper trains ``S`` through a straight-through estimator: the mask's
gradient is taken as the identity's, so ``dL/dS = dL/dW' * W``, with ``dL/dW'`` the *dense*
gradient at every position, pruned ones included. Under SGD from ``S = 0`` the score is then
``S_T = -alpha_S sum_{t<T} (dL/dW')_t W_t`` (the paper's analysis of what the scores learn): it
grows for weights moving away from zero. Here ``observe`` applies that update on every step,

.. math::

    S \\leftarrow S - \\alpha_S \\Big( \\sum_{q \\in G} \\frac{\\partial L}{\\partial W'_q} W_q
        + \\lambda_t\\, \\sigma(S)\\,(1 - \\sigma(S)) \\Big),

where ``G`` is the entry's group (one weight when unstructured: the derivative by a gate scaling
the group) and the last term is the soft variant's penalty (below; 0 for the hard variant).

**Two variants.**

* ``variant="hard"`` (the paper's movement pruning, its ``topK``): ``M = Top_v(S)``, the entries
  with the largest scores at the scheduled sparsity, with exact counts per layer
  (``scope="layer"``, the paper's per-matrix ``Top_v``) or in total (``scope="global"``, the code's
  ``--global_topk``). The ranking is invariant to a positive scale of ``S``, and ``S`` starts at 0
  and is only ever changed by ``alpha_S`` times the movement, so ``alpha_S`` changes nothing: the
  hard variant has no score learning rate (``alpha_S = 1``).
* ``variant="soft"`` (soft movement pruning, the code's ``sigmoied_threshold``): ``M = 1[S > tau]``
  with one threshold over all layers, and the penalty ``lambda R(S)``, ``R(S) = sum sigma(S)`` over
  every score, added to the scores' objective; it pushes every score down, so only weights moving
  away from zero fast enough stay above ``tau``. The sparsity is not a target: it follows from
  ``lambda``, ``alpha_S`` and ``tau`` and differs between layers (``fixed_counts`` is false and
  :func:`jaxsparse.inspection.total_sparsity` reports it; the layout's ``sparsity`` is unused). A
  layer may empty.

  Here ``alpha_S`` matters, and so does the gradients' scale: a score moves by ``alpha_S`` times
  (movement + penalty) per step, so ``lambda`` must be of the order of the per-step movement
  ``|sum_G g W|`` of the weights to keep (a score settles where its movement balances
  ``lambda sigma'(S)``), and ``alpha_S`` large enough for a score to travel from 0 to ``tau``
  within the ramp, ``alpha_S |sum_G g W| T ~ |tau|``. Both depend on the model and the loss, so
  the soft variant takes both without defaults.

**Schedule.** Both variants reach their final state on Zhu & Gupta's cubic ramp
``r_t = 1 - (1 - (t - t_0) / (t_end - t_0))^3`` (clipped to ``[0, 1]``), with the paper's warm-up
(dense until ``t_0 = begin_step``) and cool-down (the final level from ``t_end = end_step`` to the
end of training, the masks still following the scores). The authors' SQuAD runs warm up for about
one epoch of ten and cool down for about two (README of their research project:
``--warmup_steps 5400 --num_train_epochs 10 --initial_warmup 1 --final_warmup 2``, in units of
``warmup_steps``); pass the matching ``begin_step`` and ``end_step``.

* hard: the forward pass of step ``t`` sees sparsity ``S_target r_t`` (the layout's exact counts
  from ``t_end`` on): the masks are recomputed on every step from the scores *after* step
  ``t - 1``'s update, as the authors' code recomputes ``Top_v(S)`` in every forward pass
  (``update_every > 1`` recomputes them less often, each time for the step that follows).
* soft: the code compares ``sigma(S)`` with a threshold that rises on the same ramp from 0 (keep
  all) to its final value (0.1 in the README's runs) and scales ``lambda`` with it
  (``schedule_threshold``: ``regu_lambda = final_lambda * threshold / final_threshold``). In the
  scores' own units that is ``tau_t = logit(sigma(tau) r_t)``, rising from ``-inf`` to ``tau``
  (``tau = logit(0.1) ~ -2.197`` by default), with ``lambda_t = lambda r_t``.

**What we chose where the paper's code differs.**

* The state form is the paper's SGD analysis: the code trains the scores as parameters with
  AdamW at ``1e-2`` (``--mask_scores_learning_rate``), whose per-coordinate scaling ranks weights
  by something other than the accumulated movement and makes its rates scale-free; in the SGD
  form ``alpha_S`` and ``lambda`` are in the gradients' units (above), so the code's values do not
  carry over.
* The penalty is the paper's ``lambda sum sigma(S)``; the code's ``l1`` regulariser is the mean of
  ``sigma(S)`` over each matrix, averaged over matrices, so its ``lambda`` (400 in the README's
  SQuAD run) is on another scale. The code's ``ThresholdBinarizer`` keeps at least 0.5% of each
  matrix; here the mask is exactly ``S > tau_t``.
* Counts follow the library's layout: ``N - floor(s N)`` active entries (the code keeps
  ``floor((1 - s) N)``).

**Storage and invariants, as for Top-KAST.** ``W`` is stored densely (``stores_dense``): pruned
weights keep their values, so their scores go on moving and they can come back. The forward pass
sees ``forward_params(params, state) = W * M``, exactly 0 off the mask (the invariant the library
states for Top-KAST), while the stored parameters are not zero there. The wrapper hands the
algorithm the dense gradient ``dL/dW'`` for the scores, and the inner optimizer only
``dL/dW' * M`` (the product rule's ``dL/dW``): the weights off the mask get no update, so they stay
exactly where they were (the code's AdamW would still move them by its momentum and weight decay).
As for every algorithm here, the optimizer step of step ``t`` is restricted to the masks after
step ``t``'s update: the paper's ``dL/dW = dL/dW' * M_t`` differs from it only at the entries whose
mask changed at ``t``, whose optimizer slots are reset.

References:
  Sanh, Wolf, Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020; code:
  huggingface/transformers, ``examples/research_projects/movement-pruning`` (``masked_run_squad.py``,
  ``masked_run_glue.py``: ``schedule_threshold``, ``regularization``; ``emmental/modules/binarizer.py``).
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression", 2017 (the cubic schedule).
  Bengio, Léonard, Courville, "Estimating or Propagating Gradients Through Stochastic Neurons for
  Conditional Computation", 2013 (the straight-through estimator).
"""

from __future__ import annotations

import dataclasses
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse._scalars import real_scalar
from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm
from jaxsparse.algorithms._drop_and_grow import grad_leaves
from jaxsparse.algorithms._factory_options import check_pooled_scope, make_layout
from jaxsparse.algorithms._magnitude_pruning import (
    SCOPES,
    first_order,
    prune_by_scores,
    ramp_training_flops,
    score_dtype,
    sparsified_map,
    sparsity_in_effect,
)
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import Masks, Params, SparsityLayout, mask_leaves, masks_from_leaves
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import Schedule, UpdateSchedule, polynomial_sparsity

__all__ = ["MOVEMENT_VARIANTS", "MovementPruning", "MovementState", "movement"]

MOVEMENT_VARIANTS = ("hard", "soft")
"""Movement pruning's masks: the top scores at a scheduled sparsity, or the scores above a threshold."""

_SOFT_THRESHOLD = math.log(0.1 / 0.9)
"""``logit(0.1)``: the authors' final threshold on ``sigmoid(S)`` (``--final_threshold 0.1``), in score units."""


class MovementState(typing.NamedTuple):
    """Movement pruning's state: the score ``S`` of every mask entry (``None`` at dense leaves).

    Attributes:
      scores: at every sparsified leaf an array of its mask's shape (one score per group), at
        least float32.
    """

    scores: Params


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class MovementPruning(SparseAlgorithm):
    """Movement pruning: masks from scores that accumulate ``-dL/dW' * W`` (see the module docstring).

    Attributes:
      layout: which leaves are pruned, their structure and (hard variant) final sparsities.
      schedule: the mask recomputation grid (``begin_step``, every ``update_every`` steps, no end:
        the masks follow the scores through the cool-down).
      ramp: ``r_t``, the cubic ramp from 0 at ``begin_step`` to 1 at ``ramp_end``.
      ramp_end: ``t_end``, where the hard variant reaches the layout's exact counts and the soft
        one its final threshold and penalty.
      variant: ``"hard"`` or ``"soft"``.
      scope: ``"layer"`` or ``"global"`` top-k (hard); ``"global"`` for the soft variant's one threshold.
      penalty: ``lambda``, the soft variant's penalty strength (``None`` for hard).
      score_learning_rate: ``alpha_S`` of the soft variant (``None`` for hard, which does not depend on it).
      threshold: ``tau``, the soft variant's final threshold on the scores (``None`` for hard).
      skip_optimizer_on_update: apply no optimizer step on mask-update steps.
      regularizer: an optional penalty on the weights.
    """

    name: str = "movement"
    layout: SparsityLayout
    schedule: UpdateSchedule
    ramp: Schedule
    ramp_end: int
    variant: str = "hard"
    scope: str = "layer"
    penalty: float | None = None
    score_learning_rate: float | None = None
    threshold: float | None = None
    skip_optimizer_on_update: bool = False
    regularizer: Regularizer | None = None

    stores_dense: typing.ClassVar[bool] = True
    fixed_counts: typing.ClassVar[bool] = False

    def __post_init__(self):
        if self.variant not in MOVEMENT_VARIANTS:
            raise ValueError(f"unknown movement variant {self.variant!r}; choose 'hard' (top-k) or 'soft' (threshold).")
        if self.skip_optimizer_on_update and self.schedule.update_every == 1:
            raise ValueError(
                "skip_optimizer_on_update=True with masks recomputed on every step (update_every=1) would skip every "
                "optimizer step: leave it False, or recompute the masks less often."
            )
        soft = {"penalty": self.penalty, "score_learning_rate": self.score_learning_rate, "threshold": self.threshold}
        if self.variant == "hard":
            if self.scope not in SCOPES:
                raise ValueError(f"unknown scope {self.scope!r}; choose 'layer' or 'global'.")
            check_pooled_scope(self.scope, self.layout, "scope")
            given = [name for name, value in soft.items() if value is not None]
            if given:
                raise ValueError(
                    f"only variant='soft' takes {', '.join(given)}: the hard variant keeps the top scores, which a "
                    "positive score learning rate does not reorder and which no penalty or threshold enters."
                )
            return
        if self.scope != "global":
            raise ValueError(
                "soft movement pruning compares every score with one threshold, so its scope is 'global' "
                f"(got scope={self.scope!r}); for per-layer counts use variant='hard'."
            )
        if self.layout.row_wise:
            raise ValueError(
                f"soft movement pruning thresholds every score, which cannot keep the per-row counts the structure "
                f"{self.layout.structure!r} fixes: use variant='hard' with it, or a whole-layer group structure."
            )
        penalty = real_scalar(self.penalty, "penalty", "a float >= 0")
        rate = real_scalar(self.score_learning_rate, "score_learning_rate", "a float > 0")
        threshold = real_scalar(self.threshold, "threshold", "a finite float")
        if not (math.isfinite(penalty) and penalty >= 0):
            raise ValueError(
                f"penalty must be a finite float >= 0 (lambda of lambda * sum sigmoid(S)), got {penalty!r}."
            )
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"score_learning_rate must be a finite float > 0, got {rate!r}.")
        if not math.isfinite(threshold):
            raise ValueError(
                f"threshold must be a finite float (the authors': logit(0.1) ~ -2.197), got {threshold!r}."
            )
        object.__setattr__(self, "penalty", penalty)
        object.__setattr__(self, "score_learning_rate", rate)
        object.__setattr__(self, "threshold", threshold)

    # ----- the schedule ----------------------------------------------------------------------------

    def sparsity_at(self, step: jax.typing.ArrayLike) -> jax.Array:
        """The hard variant's global sparsity ``S r_t`` in the forward pass of ``step``."""
        return jnp.asarray(self.layout.sparsity, jnp.float32) * jnp.asarray(self.ramp(step), jnp.float32)

    def threshold_at(self, step: jax.typing.ArrayLike) -> jax.Array:
        """The soft variant's ``tau_t = logit(sigmoid(tau) r_t)``: ``-inf`` before the ramp, ``tau`` after it."""
        ramp = jnp.asarray(self.ramp(step), jnp.float32)
        share = jnp.float32(1.0 / (1.0 + math.exp(-self.threshold))) * ramp
        return jnp.where(ramp >= 1.0, jnp.float32(self.threshold), jnp.log(share) - jnp.log1p(-share))

    # ----- masks and scores ------------------------------------------------------------------------

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Every entry: the ramp starts at 0 (sparsity 0, threshold ``-inf``), as fine-tuning starts dense."""
        del key
        return masks_from_leaves(
            params, [None if plan is None else jnp.ones(plan.mask_shape, bool) for plan in self.plan(params)]
        )

    def init_state(self, params: Params, masks: Masks) -> MovementState:
        """``S = 0`` at every mask entry, at least float32."""
        del masks
        zeros = sparsified_map(lambda plan, p: jnp.zeros(plan.mask_shape, score_dtype(p)), params, self.plan(params))
        return MovementState(zeros)

    def observe(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, state: MovementState
    ) -> MovementState:
        """``S <- S - (sum_G dL/dW' W)`` (hard), ``S <- S - alpha_S (sum_G dL/dW' W + lambda_t sigma'(S))`` (soft)."""
        del masks
        if grads is None:
            raise ValueError(
                "movement pruning accumulates its scores from the dense gradient dL/d(W * M): pass grads to update "
                "(sparsify does)."
            )
        strength = None if self.variant == "hard" else self.penalty * jnp.asarray(self.ramp(step), jnp.float32)

        def accumulate(plan, param, score, grad):
            movement = first_order(plan, param, grad)
            if strength is None:
                return score - movement
            gate = jax.nn.sigmoid(score)
            penalty_gradient = strength.astype(score.dtype) * gate * (1.0 - gate)
            return score - jnp.asarray(self.score_learning_rate, score.dtype) * (movement + penalty_gradient)

        scores = sparsified_map(
            accumulate, params, self.plan(params), mask_leaves(params, state.scores), grad_leaves(params, grads)
        )
        return MovementState(scores)

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Step ``t + 1``'s masks from the scores after step ``t``: top-k at ``S r_{t+1}``, or ``S > tau_{t+1}``."""
        del masks, grads  # the scores already hold this step's gradient (observe runs first)
        following = jnp.asarray(step, jnp.int32) + 1
        if self.variant == "soft":
            threshold = self.threshold_at(following)
            above = sparsified_map(
                lambda plan, p, s: s > threshold.astype(s.dtype),
                params,
                self.plan(params),
                mask_leaves(params, state.scores),
            )
            return above, state
        at_end = following >= self.ramp_end
        masks = prune_by_scores(
            self.layout, params, state.scores, None, self.sparsity_at(following), at_end, key, self.scope
        )
        return masks, state

    def on_mask_change(self, params, old, new, state, key, is_update) -> None:
        """Nothing: weights are stored densely, so a weight that comes back resumes from its stored value."""
        del params, old, new, state, key, is_update

    # ----- cost model ------------------------------------------------------------------------------

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``(2 f_S(t) + f_D) / 3 f_D`` averaged over the steps: the scores need the dense weight gradient always.

        The forward pass and the input gradient run at the forward density ``f_S(t)``, the weight
        gradient ``dL/dW'`` densely on every step (the scores of pruned weights keep moving). Hard:
        ``f_S(t)`` at the sparsity the last mask update set, each layer at ``S_l s_t / S`` with
        ``S_l`` its final sparsity (as for gradual magnitude pruning). Soft: the sparsity is not
        scheduled, so ``f_S`` is taken at the final masks' density throughout (an estimate).
        """
        del trainable_density, names, plans
        if self.variant == "soft":
            sparse = float(forward_density @ flops / flops.sum())
        else:
            steps = np.arange(total_steps)
            updates = np.asarray(self.is_update_step(steps))
            set_to = np.asarray(self.sparsity_at(steps + 1), dtype=np.float64)
            sparse = ramp_training_flops(
                flops, forward_density, self.layout.sparsity, sparsity_in_effect(updates, set_to, 0.0)
            )
        return (2.0 * sparse + 1.0) / 3.0


def movement(
    sparsity: float | None,
    *,
    variant: str = "hard",
    distribution: str = "erk",
    begin_step: int = 0,
    end_step: int,
    update_every: int = 1,
    scope: str | None = None,
    penalty: float | None = None,
    score_learning_rate: float | None = None,
    threshold: float | None = None,
    skip_optimizer_on_update: bool = False,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> MovementPruning:
    """Movement pruning (Sanh, Wolf, Rush 2020) for fine-tuning: keep the weights that move away from zero.

    Scores accumulate ``S <- S - dL/dW' * W`` (summed over each group) on every step; the forward
    pass sees ``W * M`` with ``M`` the top scores at the cubic ramp's sparsity (``"hard"``) or the
    scores above a rising threshold, pushed down by ``lambda sum sigmoid(S)`` (``"soft"``). Weights
    are stored densely, so pruned ones can come back. See the module docstring for the formulas and
    what was chosen where the paper leaves room.

    Args:
      sparsity: the hard variant's final sparsity ``S`` in ``[0, 1)`` (``None`` under N:M: the
        structure's). The soft variant has no target: it only takes the layout (which leaves,
        which structure) from it, and its sparsity follows from ``penalty``.
      variant: ``"hard"`` (top-k, exact counts) or ``"soft"`` (threshold, counts not fixed).
      distribution: how ``S`` is split over layers (hard, ``scope="layer"``).
      begin_step: ``t_0``, the end of the warm-up (dense before it).
      end_step: ``t_end``, where the ramp ends; the cool-down runs from there to the end of training.
      update_every: steps between mask recomputations (the paper: 1, every step).
      scope: hard: ``"layer"`` (default, each layer's own top-k, the paper's) or ``"global"`` (one
        top-k over all layers); soft: ``"global"`` only (one threshold), its default.
      penalty: soft only, and required: ``lambda`` of the penalty ``lambda sum sigmoid(S)``, which sets
        the sparsity (``>= 0``; 0: nothing drives the scores below ``tau``).
      score_learning_rate: soft only, and required: ``alpha_S > 0``, the scores' step size.
      threshold: soft only: the final threshold ``tau`` on the scores (default ``logit(0.1)``, the
        authors' ``sigmoid(S) > 0.1``).
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (refused with
        ``update_every=1``, where that is every step).
      regularizer: an optional penalty on the weights.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields (the soft variant
        refuses row-wise structures, N:M and constant fan-in).

    Returns:
      The algorithm.

    Raises:
      ValueError: an unknown variant or scope, a soft-only argument with ``variant="hard"``, the
        soft variant without ``penalty`` or ``score_learning_rate``, a negative penalty, a score
        learning rate that is not positive, a threshold that is not finite, the soft variant at a
        row-wise structure, or ``skip_optimizer_on_update`` with ``update_every=1``.

    Example:
      >>> algo = movement(0.9, begin_step=100, end_step=900)
      >>> [round(float(algo.sparsity_at(t)), 4) for t in (100, 500, 950)]
      [0.0, 0.7875, 0.9]
      >>> soft = movement(0.9, variant="soft", penalty=1e-4, score_learning_rate=1e3, end_step=100)
      >>> float(soft.threshold_at(0)), round(float(soft.threshold_at(100)), 4)
      (-inf, -2.1972)

    References:
      Sanh, Wolf, Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020.
      Zhu & Gupta, "To prune, or not to prune", 2017.
    """
    if variant not in MOVEMENT_VARIANTS:
        raise ValueError(f"unknown movement variant {variant!r}; choose 'hard' (top-k) or 'soft' (threshold).")
    layout = make_layout(sparsity, distribution, layout_options)
    if variant == "soft":
        missing = [
            f"{name} ({flag})"
            for name, flag, value in (
                ("penalty", "--movement-penalty", penalty),
                ("score_learning_rate", "--movement-score-lr", score_learning_rate),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"soft movement pruning needs {' and '.join(missing)}: lambda of lambda * sum sigmoid(S) sets its "
                "sparsity and alpha_S how fast the scores move, both in the gradients' units (see "
                "jaxsparse.algorithms.movement); for a fixed sparsity use variant='hard'."
            )
        threshold = _SOFT_THRESHOLD if threshold is None else threshold
    return MovementPruning(
        layout=layout,
        schedule=UpdateSchedule(begin_step, None, update_every),
        ramp=polynomial_sparsity(1.0, begin_step, end_step),
        ramp_end=end_step,
        variant=variant,
        scope=("layer" if variant == "hard" else "global") if scope is None else scope,
        penalty=penalty,
        score_learning_rate=score_learning_rate,
        threshold=threshold,
        skip_optimizer_on_update=skip_optimizer_on_update,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> MovementPruning:
    options = settings.options
    soft = {
        "penalty": options["movement_penalty"],
        "score_learning_rate": options["movement_score_lr"],
        "threshold": options["movement_threshold"],
    }
    # The paper recomputes the masks from the scores on every step, ramp and cool-down alike; the
    # run-level grid (--update-every, 50 by default) is for methods that update masks rarely.
    shared = {**settings.factory_keywords(), "update_every": 1}
    return movement(
        settings.sparsity,
        variant=options["movement_variant"],
        **{name: value for name, value in soft.items() if value is not None},
        **shared,
    )


register(
    Method(
        "movement",
        _build,
        "fine-tuning: keep the weights moving away from zero, scores -sum dL/dW' W, masks recomputed every step "
        "(Sanh, Wolf, Rush 2020)",
        (
            Option(
                "movement_variant",
                str,
                "hard",
                "movement: hard (top-k of the scores on the cubic ramp) or soft (scores above a threshold)",
                valid=lambda value, settings: value in MOVEMENT_VARIANTS,
                rule="must be 'hard' or 'soft'",
            ),
            Option(
                "movement_penalty",
                float,
                None,
                "movement, soft (required): lambda of lambda*sum sigmoid(S), which sets the sparsity",
                valid=lambda value, settings: value is None or (math.isfinite(value) and value >= 0),
                rule="must be a float >= 0",
            ),
            Option(
                "movement_score_lr",
                float,
                None,
                "movement, soft (required): the scores' learning rate alpha_S",
                valid=lambda value, settings: value is None or (math.isfinite(value) and value > 0),
                rule="must be a float > 0, e.g. 0.01",
            ),
            Option(
                "movement_threshold",
                float,
                None,
                "movement, soft: the final threshold tau on the scores (default logit(0.1) = -2.197, the authors')",
                valid=lambda value, settings: value is None or math.isfinite(value),
                rule="must be a finite float",
            ),
        ),
    )
)
