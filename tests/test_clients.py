"""Real clients: flax nnx's ``Optimizer``, equinox's filtered loop, and every optax wrapper.

The README's "flax nnx" and "equinox" sections are run here block by block, in one namespace per
test, so the documented recipes cannot drift from working code. Between blocks the tests drive the
README's own train step and check, before the first step and after every step, what every client
must get: exact per-layer counts, parameters exactly ``+0`` off the forward masks, masks that
really move (RigL), a loss that goes down. Top-KAST is checked for what its recipe is for: the
loss it trains is the loss of the forward model ``theta * A``, which is the model it deploys.
Last, the four helpers that take "the state" are given each optax wrapper that can hold one.
"""

from __future__ import annotations

import pathlib
import re

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxsparse as jsp
from tests.helpers import make_train_step

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("fast_compiles")


def readme_blocks(heading: str) -> list[str]:
    """The ``python`` code blocks of the README section under ``heading``, in order."""
    section = README.read_text().split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def assert_exactly_sparse(params, opt_state) -> list[np.ndarray]:
    """Each forward mask has its plan's exact count and the params are ``+0`` off it; returns the masks."""
    state = jsp.transform.find_sparsify_state(opt_state)
    masks = jax.tree.structure(params).flatten_up_to(jsp.masks_of(opt_state))
    sparse = []
    for plan, param, mask in zip(state.plans, jax.tree.leaves(params), masks, strict=True):
        if plan is None:
            assert mask is None
            continue
        mask = np.asarray(mask)
        assert int(mask.sum()) == plan.active, plan.name
        off = np.asarray(param)[~mask]
        assert np.all(off == 0) and not np.any(np.signbit(off)), f"{plan.name}: not +0 off the mask"
        sparse.append(mask)
    assert sparse, "no sparsified leaf"
    return sparse


def train_checked(step, n_steps: int, params_of, state_of) -> tuple[list[float], int]:
    """Runs ``step()`` ``n_steps`` times, checking exact sparsity after each; the losses and mask changes."""
    losses, changed = [], 0
    masks = assert_exactly_sparse(params_of(), state_of())
    for _ in range(n_steps):
        losses.append(float(step()))
        new_masks = assert_exactly_sparse(params_of(), state_of())
        changed += sum(int((old != new).sum()) for old, new in zip(masks, new_masks, strict=True))
        masks = new_masks
    return losses, changed


# ----- flax nnx -----------------------------------------------------------------------------------


def nnx_params(model):
    return nnx.as_pure(nnx.state(model, nnx.Param))


def test_nnx_optimizer_trains_sparse_from_step_zero():
    definitions, setup, loop, _, _ = readme_blocks("### flax nnx")
    ns: dict = {}
    exec(definitions, ns)
    exec(setup, ns)
    model, optimizer, x, y = ns["model"], ns["optimizer"], ns["x"], ns["y"]
    # update_every=5 from step 0: steps 0, 5 and 10 recompute the masks.
    losses, changed = train_checked(
        lambda: ns["train_step"](model, optimizer, x, y), 11, lambda: nnx_params(model), lambda: optimizer.opt_state
    )
    assert changed > 0, "RigL never changed a mask"
    exec(loop, ns)  # the README's own loop and summary
    assert float(ns["loss"]) < losses[0]
    assert_exactly_sparse(nnx_params(model), optimizer.opt_state)
    # The README's claim: for a masked algorithm the plain nnx loss gives the same gradient.
    chex.assert_trees_all_equal(
        nnx.grad(ns["loss_fn"])(model, x, y), nnx.grad(ns["sparse_loss"])(model, optimizer.opt_state, x, y)
    )


def test_nnx_helpers_take_nnx_trees():
    definitions, setup, *_ = readme_blocks("### flax nnx")
    ns: dict = {}
    exec(definitions, ns)
    exec(setup, ns)
    model, optimizer = ns["model"], ns["optimizer"]
    boxed = nnx.state(model, nnx.Param)
    # The optimizer keeps the masks in OptVariable boxes; masks_of hands back plain bool arrays.
    is_box = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    assert any(is_box(v) for v in jax.tree.leaves(optimizer.opt_state.masks, is_leaf=is_box))
    masks = jsp.masks_of(optimizer.opt_state)
    assert jax.tree.structure(masks, is_leaf=lambda m: m is None) == jax.tree.structure(nnx_params(model))
    assert masks["hidden"]["bias"] is None and masks["hidden"]["kernel"].dtype == jnp.bool_
    # apply_masks and forward_params keep the Param boxes they are given, and work on pure states too.
    for params in (boxed, nnx_params(model)):
        for helper in (jsp.apply_masks, jsp.forward_params):
            out = helper(params, optimizer.opt_state)
            assert jax.tree.structure(out) == jax.tree.structure(params)
            chex.assert_trees_all_equal(nnx.as_pure(out), nnx_params(model))  # projected at setup already
    table = jsp.summary(boxed, optimizer.opt_state)
    assert table == jsp.summary(nnx_params(model), optimizer.opt_state)
    assert "hidden/kernel " in table and "/value" not in table
    # nnx.state(optimizer) flattens the sparsify state away: the error says what to pass instead.
    with pytest.raises(TypeError, match=r"optimizer\.opt_state"):
        jsp.masks_of(nnx.state(optimizer))


def test_nnx_top_kast_trains_the_forward_model():
    definitions, _, loop, setup, deploy = readme_blocks("### flax nnx")
    ns: dict = {}
    exec(definitions, ns)
    exec(setup, ns)
    model, optimizer, x, y, loss_fn = ns["model"], ns["optimizer"], ns["x"], ns["y"], ns["loss_fn"]
    algo = optimizer.opt_state.algorithm
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def forward_model_loss():
        """The loss of theta * A, the model Top-KAST deploys."""
        params = nnx.state(model, nnx.Param)
        return float(loss_fn(nnx.merge(graphdef, jsp.apply_masks(params, optimizer.opt_state), rest), x, y))

    # The trap the README warns of: the stored model is dense, and its plain gradient is another one.
    before = forward_model_loss()
    assert float(loss_fn(model, x, y)) != before
    plain, sparse = nnx.grad(loss_fn)(model, x, y), nnx.grad(ns["sparse_loss"])(model, optimizer.opt_state, x, y)
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), plain, sparse)))

    backward_active = [plan.active for plan in algo.backward_layout.plan(nnx_params(model)) if plan is not None]
    for _ in range(6):
        expected = forward_model_loss()
        # What the step trains is the forward model: its loss is the one the step reports.
        assert float(ns["train_step"](model, optimizer, x, y)) == pytest.approx(expected, rel=1e-5)
        backward = jax.tree.leaves(jsp.transform.find_sparsify_state(optimizer.opt_state).masks.backward)
        assert [int(b.sum()) for b in backward] == backward_active
    exec(loop, ns)
    exec(deploy, ns)
    sparse_model = ns["sparse_model"]
    assert float(loss_fn(sparse_model, x, y)) < before
    assert_exactly_sparse(nnx_params(sparse_model), optimizer.opt_state)
    # The stored weights stay dense: more non-zeros than the forward set holds.
    stats = {s.name: s for s in jsp.layer_stats(nnx.state(model, nnx.Param), optimizer.opt_state)}
    assert stats["hidden/kernel"].nonzero > stats["hidden/kernel"].active


# ----- equinox ------------------------------------------------------------------------------------


class SmallCNN(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array):
        conv_key, head_key = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, kernel_size=3, key=conv_key)
        self.head = eqx.nn.Linear(4 * 6 * 6, 4, key=head_key)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jax.nn.relu(self.conv(x)).reshape(-1))


def eqx_params(model):
    return eqx.filter(model, eqx.is_array)


def train_eqx_checked(train_step, model, opt_state, x, y):
    """11 checked steps of an equinox ``train_step`` (masks recomputed at steps 0, 5 and 10)."""
    carry = [model, opt_state]

    def step():
        carry[0], carry[1], loss = train_step(carry[0], carry[1], x, y)
        return loss

    losses, changed = train_checked(step, 11, lambda: eqx_params(carry[0]), lambda: carry[1])
    return carry[0], carry[1], losses, changed


def test_equinox_mlp_trains_sparse_from_step_zero():
    setup, loop = readme_blocks("### equinox")
    ns: dict = {}
    exec(setup, ns)
    assert len(ns["model"].layers) == 3  # depth=2: a 3-tuple of layers, with None for every non-array field
    ns["model"], ns["opt_state"], losses, changed = train_eqx_checked(
        ns["train_step"], ns["model"], ns["opt_state"], ns["x"], ns["y"]
    )
    assert changed > 0, "RigL never changed a mask"
    exec(loop, ns)
    assert float(ns["loss"]) < losses[0]
    assert_exactly_sparse(eqx_params(ns["model"]), ns["opt_state"])
    masks = jsp.masks_of(ns["opt_state"])
    assert masks.activation is None and masks.layers[0].bias is None and masks.layers[2].weight is not None
    assert "layers/1/weight" in jsp.summary(eqx_params(ns["model"]), ns["opt_state"])


def test_equinox_conv_model_trains_with_the_readme_step():
    setup, _ = readme_blocks("### equinox")
    ns: dict = {}
    exec(setup, ns)
    optim, train_step = ns["optim"], ns["train_step"]
    x = jax.random.normal(jax.random.key(4), (32, 1, 8, 8))
    y = jax.random.randint(jax.random.key(5), (32,), 0, 4)
    model = SmallCNN(jax.random.key(6))
    opt_state = optim.init(eqx_params(model))
    model = eqx.combine(jsp.apply_masks(eqx_params(model), opt_state), model)
    masks = jsp.masks_of(opt_state)
    assert masks.conv.weight.shape == (4, 1, 3, 3) and masks.conv.bias is None  # the (4, 1, 1) bias is dense
    model, opt_state, losses, changed = train_eqx_checked(train_step, model, opt_state, x, y)
    assert changed > 0, "RigL never changed a mask"
    assert losses[-1] < losses[0]
    assert "conv/weight" in jsp.summary(eqx_params(model), opt_state)


# ----- the helpers on every optax wrapper -----------------------------------------------------------


def _sparse(learning_rate: float = 0.1) -> optax.GradientTransformationExtraArgs:
    return jsp.sparsify(optax.sgd(learning_rate, momentum=0.9), jsp.static(0.5), key=jax.random.key(0))


# Each wrapper, and how to reach the sparsify state inside it by hand.
WRAPPERS = {
    "chain": (lambda: optax.chain(optax.clip_by_global_norm(1.0), _sparse()), lambda state: state[1]),
    "multi_steps": (lambda: optax.MultiSteps(_sparse(), every_k_schedule=2), lambda state: state.inner_opt_state),
    "inject_hyperparams": (
        lambda: optax.inject_hyperparams(_sparse)(learning_rate=0.1),
        lambda state: state.inner_state,
    ),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_helpers_take_any_enclosing_state(wrapper, mlp, batch):
    make, inner_of = WRAPPERS[wrapper]
    tx = make()
    state = jax.jit(tx.init)(mlp)
    inner = inner_of(state)
    assert isinstance(inner, jsp.SparsifyState)
    params = jsp.apply_masks(mlp, state)
    step = jax.jit(make_train_step(tx))
    for _ in range(3):
        params, state = step(params, state, batch)
    inner = inner_of(state)
    chex.assert_trees_all_equal(jsp.masks_of(state), jsp.masks_of(inner))
    chex.assert_trees_all_equal(jsp.apply_masks(mlp, state), jsp.masks.apply_masks(mlp, jsp.masks_of(inner)))
    chex.assert_trees_all_equal(jsp.forward_params(mlp, state), jsp.forward_params(mlp, inner))
    assert jsp.summary(params, state) == jsp.summary(params, inner)


def test_the_structure_section_builds_what_it_shows():
    """The README's Structure examples construct their algorithms (each line is a complete call)."""
    (block,) = readme_blocks("### Structure")
    namespace = {"jsp": jsp}
    exec(block, namespace)
    algo = eval(block.strip().splitlines()[-1].split("#")[0], namespace)  # the last line's algorithm
    assert algo.name == "nm_sr_ste" and algo.layout.sparsity == 0.5


def test_the_when_to_prune_section_runs():
    """The README's pruning-at-init, IMP and SNFS example runs as shown and builds what it says."""
    (block,) = readme_blocks("### When to prune: at initialisation, iteratively, dynamically")
    namespace: dict = {}
    exec(block, namespace)
    assert namespace["layer_collapse"](namespace["params"], namespace["masks"]) == []
    state = namespace["tx"].init(namespace["params"])
    planned = [plan.active for plan in namespace["static"].plan(namespace["params"]) if plan is not None]
    assert [int(m.sum()) for m in jax.tree.leaves(jsp.masks_of(state))] == planned
    assert namespace["ticket"].name == "imp" and namespace["snfs"].name == "snfs"


def test_the_pruning_a_trained_model_section_runs():
    """The README's one-shot example runs as shown: exact counts, zeros off the masks, 2:4 groups."""
    (block,) = readme_blocks("### Pruning a trained model")
    namespace: dict = {}
    exec(block, namespace)
    params, layout = namespace["params"], namespace["layout"]
    planned = [plan.active for plan in layout.plan(params) if plan is not None]
    for result in (namespace["gpt"], namespace["obs"]):
        masks = [m for m in jax.tree.leaves(result.masks)]
        assert [int(m.sum()) for m in masks] == planned
        kernels = [result.params[f"layer_{i}"]["kernel"] for i in range(3)]
        assert all(np.all(np.asarray(k)[~np.asarray(m)] == 0) for k, m in zip(kernels, masks, strict=True))
    for mask in jax.tree.leaves(namespace["nm"].masks):
        np.testing.assert_array_equal(np.asarray(mask).reshape(-1, 4, mask.shape[-1]).sum(axis=1), 2)
    assert_exactly_sparse(namespace["gpt"].params, namespace["state"])


def test_the_real_speedups_section_runs():
    """The README's SSL + compaction example: channels removed for real, the same function at another batch size."""
    (block,) = readme_blocks("### Real speedups: structured sparsity and compaction")
    namespace: dict = {}
    exec(block, namespace)
    small, params, apply_fn, x = (namespace[k] for k in ("small", "params", "apply_fn", "x"))
    before, after = small.parameter_counts
    assert after < before
    kernel = np.asarray(params["Conv_0"]["kernel"])
    removed = np.setdiff1d(np.arange(kernel.shape[-1]), small.kept["Conv_0/kernel"][-1])
    # Each removed filter is dead (zero, with its bias) or unused (the next conv's shape groups zeroed its input).
    dead = np.all(kernel == 0, axis=(0, 1)) & (np.asarray(params["Conv_0"]["bias"]) == 0)
    unused = np.all(np.asarray(params["Conv_1"]["kernel"]) == 0, axis=(0, 2))
    assert removed.size and np.all((dead | unused)[removed])
    np.testing.assert_allclose(namespace["logits"], apply_fn(params, x[:8]), rtol=1e-5, atol=1e-5)
