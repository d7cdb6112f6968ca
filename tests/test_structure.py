"""Structure as an axis of every algorithm: N:M, blocks, channels, heads, constant fan-in.

The pattern invariants are checked against independent numpy counts (never the library's own row
views): each N:M group has exactly N on, each neuron under constant fan-in exactly k inputs, every
block or channel is all on or all off with exactly the planned number on, and masks are stored at
group size. Every registered algorithm runs at every structure under ``jit``, with no retracing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsparse as jsp
from jaxsparse._positions import mix32
from jaxsparse.masks import NM, Blocks, FanIn, InputChannels, OutputChannels, Unstructured
from tests.helpers import SMALL_OPTIONS, make_batch, make_mlp, mlp_loss

SIZES = (16, 32, 16, 8)  # kernels (16, 32), (32, 16), (16, 8): every structure below divides them
STRUCTURES = {
    "2:4": NM(2, 4),
    "block:4x4": Blocks((4, 4)),
    "channel": OutputChannels(),
    "input_channel": InputChannels(),
    "fan_in": FanIn(),
}
OWN_STRUCTURE = {"nm_ste": "2:4", "nm_sr_ste": "2:4", "srigl": "fan_in"}  # methods built for one structure
OWN_STRUCTURE["snfs"] = "channel"  # moves counts across layers: refuses 2:4 and fan_in (tests/test_snfs.py)
# SSL's group types choose its groups and its masks stay per weight; L1-filter pruning removes filters.
OWN_STRUCTURE.update(ssl="unstructured", l1_filter="channel")


def _row_counts(structure, mask: np.ndarray) -> np.ndarray | None:
    """Per-row counts of an element-size mask, by the structure's definition (numpy, independent)."""
    if isinstance(structure, NM):
        grouped = np.moveaxis(mask, -2, -1)
        return grouped.reshape(*grouped.shape[:-1], -1, structure.m).sum(-1)
    if isinstance(structure, FanIn):
        return mask.reshape(-1, mask.shape[-1]).sum(0)
    return None


def assert_pattern(plan, mask, *, at_plan: bool = True) -> None:
    """The mask has its group-level shape and, with ``at_plan``, the plan's exact counts per row."""
    mask = np.asarray(mask)
    assert mask.shape == plan.mask_shape and mask.dtype == bool, (plan.name, mask.shape)
    counts = _row_counts(plan.structure, mask)
    if counts is None:  # whole-layer structures: groups are single entries, so whole by construction
        if at_plan:
            assert mask.sum() == plan.active, (plan.name, mask.sum(), plan.active)
        return
    assert (counts == counts.flat[0]).all(), (plan.name, np.unique(counts))  # every row alike, always
    if at_plan:
        assert counts.flat[0] == plan.row_active, (plan.name, counts.flat[0], plan.row_active)


def _build(name: str, structure_name: str):
    method = jsp.algorithms.lookup(name)
    structure = jsp.masks.parse_structure(structure_name)
    fixed = jsp.masks.fixed_sparsity(structure)
    shared = dict(update_every=2, begin_step=0, end_step=6, steps=3, distribution="uniform", structure=structure)
    return method.make(0.5 if fixed is None else None, options=SMALL_OPTIONS, **shared)


def _matrix():
    """Every method at a whole-layer structure (channels) and both row-wise ones (2:4, fan-in); blocks,
    input channels and 1:4 (the same code paths on other shapes) with a few."""
    for method in jsp.algorithms.registered():
        own = OWN_STRUCTURE.get(method.name)
        for structure_name in [own] if own else ["2:4", "channel", "fan_in"]:
            yield method.name, structure_name
    for name in ("rigl", "top_kast", "gap"):
        yield name, "block:4x4"
    yield from [
        ("rigl", "input_channel"),
        ("gradual_magnitude", "input_channel"),
        ("nm_sr_ste", "1:4"),
        ("rigl", "1:4"),
    ]


@pytest.mark.parametrize(("name", "structure_name"), list(_matrix()))
def test_every_algorithm_keeps_the_pattern_at_every_structure(name, structure_name, fast_compiles):
    algo = _build(name, structure_name)
    params = make_mlp(jax.random.key(0), SIZES)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(1))
    state = tx.init(params)
    params = jsp.apply_masks(params, state)  # the documented start: params on their masks
    plans = algo.plan(params)
    assert {plan.structure for plan in plans if plan} == {jsp.masks.parse_structure(structure_name)}

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(mlp_loss)(algo.forward_params(params, state.masks), batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    exact = algo.fixed_counts and name != "srigl"  # srigl's ablation is tested on its own below
    for t in range(10 if name in ("gap", "gradual_magnitude") else 5):
        masks = state.masks
        forward, trainable = algo.forward_masks(masks), algo.trainable_masks(masks)
        for plan, f, m, p in zip(
            plans,
            jsp.masks.mask_leaves(params, forward),
            jsp.masks.mask_leaves(params, trainable),
            jax.tree.leaves(params),
            strict=True,
        ):
            if plan is None:
                continue
            assert_pattern(plan, f, at_plan=exact or t > 8)  # the ramp ends at step 6, GaP's last prune at 8
            if not algo.stores_dense:
                off = ~np.asarray(plan.structure.expand(m, plan.shape))
                assert (np.asarray(p)[off] == 0).all(), (name, plan.name, t)
        params, state = step(params, state, make_batch(jax.random.key(t), 8, SIZES[0], SIZES[-1]))
    assert step._cache_size() == 1


@settings(max_examples=25, deadline=None)
@given(
    nm=st.sampled_from([(2, 4), (1, 4), (2, 8), (1, 16)]),
    groups=st.integers(1, 3),
    columns=st.integers(1, 5),
    levels=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_nm_masks_equal_sorting_every_group_ties_included(nm, groups, columns, levels, seed):
    """Brute force: sort each group by (score, the documented tie priority mix32(position ^ seed))."""
    n, m = nm
    rng = np.random.default_rng(seed)
    shape = (groups * m, columns)
    scores = rng.integers(0, levels, shape).astype(np.float32)  # few levels: many ties
    tie_seed = np.uint32(rng.integers(0, 2**32, dtype=np.uint64))
    got = np.asarray(jax.jit(lambda s: NM(n, m).select(s, n, tie_seed=tie_seed))(scores))
    priority = np.asarray(mix32(jnp.arange(scores.size, dtype=jnp.uint32).reshape(shape) ^ jnp.uint32(tie_seed)))
    expected = np.zeros(shape, bool)
    for g in range(groups):
        for c in range(columns):
            rows = np.arange(g * m, (g + 1) * m)
            order = np.lexsort((priority[rows, c], scores[rows, c]))[::-1]  # last key primary, descending
            expected[rows[order[:n]], c] = True
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fan_in", [20, 100])  # the pairwise-rank path (<= 32) and the sort path
def test_one_neuron_of_constant_fan_in_is_the_exact_top_k(fan_in):
    """A single row selects exactly what the radix select does, tie order included."""
    scores = jnp.asarray(np.random.default_rng(0).integers(0, 4, (fan_in, 1)).astype(np.float32))
    candidates = jnp.asarray(np.random.default_rng(1).random((fan_in, 1)) < 0.7)
    for k in (1, 5, fan_in // 2):
        got = FanIn().select(scores, k, candidates=candidates, tie_seed=7)
        np.testing.assert_array_equal(got, jsp.top_k_mask(scores, k, candidates=candidates, tie_seed=7))


def test_constant_fan_in_holds_through_rigl_updates_dropping_layer_wide_regrowing_per_neuron():
    """RigL at fan-in: the layer's a - d largest |w| stay, then each neuron regrows what it lost by |g|."""
    params = {"w": jax.random.normal(jax.random.key(0), (48, 6))}
    algo = jsp.rigl(0.75, structure=FanIn(), distribution="uniform", update_every=1, end_step=50)
    masks = algo.init_masks(params, jax.random.key(1))
    update = jax.jit(algo.update)
    changed = 0
    for t in range(5):
        grads = {"w": jax.random.normal(jax.random.key(10 + t), (48, 6))}
        new = update(params, masks, grads, t, jax.random.key(t))
        np.testing.assert_array_equal(np.asarray(new["w"]).sum(0), [12] * 6)  # k = floor(0.25 * 48)
        w, g, old = (np.asarray(x) for x in (params["w"], grads["w"], masks["w"]))
        dropped = int(np.floor(np.float32(algo.drop_fraction(t)) * 72))
        active = np.flatnonzero(old)
        kept = np.zeros(old.size, bool)
        kept[active[np.argsort(-np.abs(w.ravel()[active]))[: 72 - dropped]]] = True
        kept = kept.reshape(old.shape)
        expected = kept.copy()
        for j in range(6):
            rest = np.flatnonzero(~kept[:, j])
            expected[rest[np.argsort(-np.abs(g[rest, j]))[: 12 - kept[:, j].sum()]], j] = True
        np.testing.assert_array_equal(np.asarray(new["w"]), expected, err_msg=str(t))
        changed += int((np.asarray(new["w"]) != old).sum())
        masks, params = new, {"w": params["w"] * (1 + 0.1 * grads["w"])}
    assert changed > 0
    assert update._cache_size() == 1


def test_drop_and_grow_at_n_m_changes_masks_and_keeps_every_group_at_n():
    """A 2:4 group cannot drop floor(0.3 * 2) = 0 of its own: the drop is layer-wide, the regrowth per group."""
    params = {"w": jax.random.normal(jax.random.key(0), (64, 32))}
    grads = {"w": jax.random.normal(jax.random.key(2), (64, 32))}
    common = dict(structure=NM(2, 4), update_every=1, end_step=100, drop_fraction_decay="constant")
    for algo in (jsp.rigl(None, **common), jsp.set_(None, **common)):
        masks = algo.init_masks(params, jax.random.key(1))
        new = jax.jit(algo.update)(params, masks, grads, 0, jax.random.key(3))
        assert (_row_counts(NM(2, 4), np.asarray(new["w"])) == 2).all()
        grown = int((np.asarray(new["w"]) & ~np.asarray(masks["w"])).sum())
        assert 0.05 * 1024 < grown <= 0.3 * 1024, (algo.name, grown)  # 307 dropped; some regrow in place


def test_srigl_ablates_neurons_with_few_salient_weights_and_redistributes_the_budget():
    """Ablated neurons have no input, the others exactly k' = min(B // n_alive, fan_in); the classifier keeps all."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(32, 16)).astype(np.float32)
    # Three neurons with negligible weights and gradients: the 30% layer-wide keep set (90 of 128
    # active) fits in the other 13 neurons' 104, and growth prefers their large gradients too.
    w0[:, :3] *= 1e-3
    params = {"Dense_0": {"kernel": jnp.asarray(w0)}, "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(16, 4)))}}
    grads = jax.tree.map(lambda p: p * 0.1, params)
    algo = jsp.srigl(0.75, gamma_sal=0.3, distribution="uniform", update_every=1, end_step=10, drop_fraction=0.3)
    masks = algo.init_masks(params, jax.random.key(0))
    new = jax.jit(algo.update)(params, masks, grads, 0, jax.random.key(1))
    per_neuron = np.asarray(new["Dense_0"]["kernel"]).sum(0)
    budget = int(np.floor(0.25 * 32 * 16))
    alive = per_neuron > 0
    assert not alive[:3].any() and alive[3:].all(), per_neuron
    assert (per_neuron[alive] == min(budget // alive.sum(), 32)).all()
    np.testing.assert_array_equal(np.asarray(new["Dense_1"]["kernel"]).sum(0), [4] * 4)  # never ablated


def test_srigl_without_ablation_is_rigl_at_constant_fan_in():
    params = make_mlp(jax.random.key(0), SIZES)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)
    common = dict(distribution="uniform", update_every=1, end_step=10)
    srigl = jsp.srigl(0.75, gamma_sal=0.0, **common)
    rigl = jsp.rigl(0.75, structure=FanIn(), **common)
    masks = rigl.init_masks(params, jax.random.key(0))
    a = srigl.update(params, masks, grads, 0, jax.random.key(1))
    b = rigl.update(params, masks, grads, 0, jax.random.key(1))
    pairs = [
        *zip(jax.tree.leaves(srigl.init_masks(params, jax.random.key(0))), jax.tree.leaves(masks), strict=True),
        *zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True),  # continuous scores: no ties
    ]
    for x, y in pairs:
        np.testing.assert_array_equal(x, y)


def test_sr_ste_gradient_matches_the_hand_computed_case():
    """W = (1, -4, 3, 0.5) in one 2:4 group, L = sum(x @ (W * m)) with x = 1: m keeps -4 and 3.

    STE's gradient is dL/d(W * m) = 1 at every weight; SR-STE adds lambda (1 - m) W: lambda * 1 and
    lambda * 0.5 on the two pruned weights. With sgd(lr=1) the update is minus that gradient.
    """
    params = {"w": jnp.array([[1.0], [-4.0], [3.0], [0.5]])}

    def loss(p):
        return jnp.sum(jnp.ones((1, 4)) @ p["w"])

    lam = 2e-4
    for algo, expected in [
        (jsp.nm_ste(), np.array([1.0, 1.0, 1.0, 1.0])),
        (jsp.nm_sr_ste(sr_ste_decay=lam), np.array([1.0 + lam, 1.0, 1.0, 1.0 + lam * 0.5])),
    ]:
        tx = jsp.sparsify(optax.sgd(1.0), algo, key=jax.random.key(0))
        state = tx.init(params)
        np.testing.assert_array_equal(state.masks["w"][:, 0], [False, True, True, False])
        forward = algo.forward_params(params, state.masks)
        np.testing.assert_array_equal(forward["w"][:, 0], [0.0, -4.0, 3.0, 0.0])
        grads = jax.grad(lambda p, algo=algo, masks=state.masks: loss(algo.forward_params(p, masks)))(params)
        np.testing.assert_array_equal(grads["w"][:, 0], [1.0, 1.0, 1.0, 1.0])  # straight through
        updates, _ = tx.update(grads, state, params)
        np.testing.assert_allclose(-np.asarray(updates["w"][:, 0]), expected, rtol=1e-6)


def test_nm_ste_forward_uses_the_mask_of_the_params_it_is_given():
    algo = jsp.nm_ste(NM(1, 4))
    params = {"w": jax.random.normal(jax.random.key(0), (8, 3))}
    masks = algo.init_masks(params, jax.random.key(0))
    moved = {"w": -params["w"][::-1]}  # other weights: the stored mask no longer fits them
    out = np.asarray(algo.forward_params(moved, masks)["w"])
    w = np.asarray(moved["w"])
    for g in range(2):
        for c in range(3):
            group = w[4 * g : 4 * g + 4, c]
            keep = np.argmax(np.abs(group))
            np.testing.assert_array_equal(out[4 * g : 4 * g + 4, c], np.where(np.arange(4) == keep, group, 0.0))


def test_top_kast_at_n_m_nests_a_forward_n_m_inside_a_looser_backward_n_m():
    algo = jsp.top_kast(0.5, 0.25, structure=NM(2, 4), distribution="uniform")
    assert algo.backward_layout.structure == NM(3, 4)
    params = make_mlp(jax.random.key(0), SIZES)
    masks = algo.init_masks(params, jax.random.key(1))
    for plan, a, b in zip(
        algo.plan(params),
        jsp.masks.mask_leaves(params, masks.forward),
        jsp.masks.mask_leaves(params, masks.backward),
        strict=True,
    ):
        if plan is None:
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert (_row_counts(NM(2, 4), a) == 2).all() and (_row_counts(NM(3, 4), b) == 3).all()
        assert not (a & ~b).any()


def test_group_masks_are_stored_at_group_size():
    params = {"conv": {"kernel": jnp.ones((3, 3, 16, 32))}, "dense": {"kernel": jnp.ones((64, 32))}}
    for structure, shapes in [
        (OutputChannels(), [(32,), (32,)]),
        (InputChannels(), [(16,), (64,)]),
        (Blocks((8, 8)), [(3, 3, 2, 4), (8, 4)]),
        (NM(2, 4), [(3, 3, 16, 32), (64, 32)]),  # N:M: at most element size
    ]:
        algo = jsp.static(0.5, structure=structure, distribution="uniform")
        masks = jax.jit(algo.init_masks)(params, jax.random.key(0))
        assert [m.shape for m in jax.tree.leaves(masks)] == shapes, structure


def test_heads_structure_on_the_library_vit():
    from jaxsparse.models import create_model

    model = create_model("vit", num_classes=10, input_shape=(8, 8, 1), depth=1, dim=32, mlp_dim=32)
    params = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    algo = jsp.rigl(0.5, structure=jsp.masks.attention_heads(), distribution="uniform", end_step=10)
    masks = jax.jit(algo.init_masks)(params, jax.random.key(1))
    plans = {plan.name: plan for plan in algo.plan(params) if plan is not None}
    heads = [name for name in plans if "attention" in name]
    assert heads and all(plans[n].mask_shape == (model.num_heads,) for n in heads)
    assert all(plans[n].structure == OutputChannels() for n in plans if n not in heads)
    for plan, mask in zip(algo.plan(params), jsp.masks.mask_leaves(params, masks), strict=True):
        if plan is not None:
            assert_pattern(plan, mask)


@pytest.mark.parametrize(
    ("structure", "shape", "message"),
    [
        (
            NM(2, 4),
            (6, 8),
            r"parameter 'w': 2:4 structure groups axis 0 of shape \(6, 8\) in groups of 4, but its size",
        ),
        (Blocks((8, 8)), (30, 30), r"parameter 'w': 8x8 blocks need .* axis 0 has size 30"),
        (FanIn(), (3, 4), r"parameter 'w': constant fan-in at sparsity 0.9 leaves no input"),
    ],
)
def test_a_structure_that_does_not_divide_a_layer_names_it_and_offers_fixes(structure, shape, message):
    with pytest.raises(ValueError, match=message) as error:
        sparsity = 0.5 if isinstance(structure, NM) else 0.9
        jsp.SparsityLayout(sparsity, distribution="uniform", structure=structure).plan({"w": jnp.ones(shape)})
    assert "keep" in str(error.value) and "dense" in str(error.value)


def test_n_m_rejects_a_conflicting_sparsity_and_layer_override():
    with pytest.raises(ValueError, match=r"sparsity=0.9 conflicts with the structure NM\(n=2, m=4.*fixes every layer"):
        jsp.rigl(0.9, structure=NM(2, 4), end_step=10)
    assert jsp.rigl(None, structure=NM(1, 4), end_step=10).layout.sparsity == 0.75
    layout = jsp.SparsityLayout(None, structure=NM(2, 4), layer_sparsity={"w": 0.8})
    with pytest.raises(ValueError, match="fixes its sparsity at 0.5"):
        layout.plan({"w": jnp.ones((8, 4))})
    with pytest.raises(ValueError, match="scope='global' shares one threshold"):
        jsp.gradual_magnitude(None, structure=NM(2, 4), scope="global", end_step=10)


def test_erk_counts_groups_when_a_structure_applies():
    """The ERK budget is over groups: sum_l active groups = sum_l (N_l - floor(S N_l)), up to one per layer."""
    params = make_mlp(jax.random.key(0), (64, 128, 64, 16))
    plans = [p for p in jsp.SparsityLayout(0.8, structure=OutputChannels()).plan(params) if p is not None]
    groups = [p.size for p in plans]
    assert groups == [128, 64, 16]
    active = sum(p.active for p in plans)
    assert abs(active - sum(n - int(np.floor(0.8 * n)) for n in groups)) <= len(plans)
    assert len({round(p.sparsity, 6) for p in plans}) > 1  # ERK, not uniform


def test_per_layer_structure_mapping_and_unmatched_leaves():
    params = make_mlp(jax.random.key(0), SIZES)
    spec = {"layer_0": NM(2, 4), "": OutputChannels()}
    plans = [p for p in jsp.SparsityLayout(0.5, distribution="uniform", structure=spec).plan(params) if p]
    assert [type(p.structure).__name__ for p in plans] == ["NM", "OutputChannels", "OutputChannels"]
    with pytest.raises(ValueError, match="matches no pattern of the structure mapping"):
        jsp.SparsityLayout(0.5, structure={"layer_0": NM(2, 4)}).plan(params)


@pytest.mark.parametrize("structure", list(STRUCTURES.values()), ids=list(STRUCTURES))
def test_sharded_group_masks_equal_the_single_device_masks(structure):
    """Kernels sharded on each axis in turn over 8 devices, group masks sharded too: the same masks as one device."""
    sparsity = None if isinstance(structure, NM) else 0.5
    algo = jsp.rigl(sparsity, structure=structure, distribution="uniform", update_every=1, end_step=10)
    params = {"w": jax.random.normal(jax.random.key(0), (64, 32))}
    grads = {"w": jax.random.normal(jax.random.key(1), (64, 32))}
    init = jax.jit(lambda p: algo.init_masks(p, jax.random.key(2)))
    update = jax.jit(lambda p, m, g: algo.update(p, m, g, 0, jax.random.key(3)))
    masks = init(params)
    single = (masks, update(params, masks, grads))
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
    for spec in (P("x", None), P(None, "x")):
        sharding = NamedSharding(mesh, spec)
        sharded_params, sharded_grads = jax.device_put(params, sharding), jax.device_put(grads, sharding)
        masks = init(sharded_params)
        # The group-level mask itself sharded over the devices (a (32,) channel mask: 4 per device).
        masks = jax.device_put(masks, NamedSharding(mesh, P("x", *([None] * (masks["w"].ndim - 1)))))
        sharded = (masks, update(sharded_params, masks, sharded_grads))
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(spec))


def test_unstructured_is_the_default_bit_for_bit():
    """An explicit Unstructured() layout is the default one: same plans, same masks (element-size)."""
    params = make_mlp(jax.random.key(0), SIZES)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)
    plain = jsp.rigl(0.8, end_step=10, update_every=1)
    explicit = jsp.rigl(0.8, end_step=10, update_every=1, structure=Unstructured())
    assert plain == explicit
    masks = jax.jit(plain.init_masks)(params, jax.random.key(0))
    new = jax.jit(explicit.update)(params, masks, grads, 0, jax.random.key(1))
    for m, plan in zip(jax.tree.leaves(new), [p for p in plain.plan(params) if p], strict=True):
        assert m.shape == plan.shape and int(m.sum()) == plan.size - int(np.floor(plan.sparsity * plan.size))


def test_handed_in_masks_are_checked_per_row():
    """A 2:4 mask with the right total but a 3-and-1 group is refused, naming the row."""
    params = {"w": jnp.ones((8, 2))}
    algo = jsp.rigl(None, structure=NM(2, 4), end_step=10)
    good = np.zeros((8, 2), bool)
    good[[0, 1, 4, 5], :] = True
    jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks={"w": jnp.asarray(good)}).init(params)
    bad = good.copy()
    bad[2, 0], bad[4, 0] = True, False  # group 0 of column 0 has 3, group 1 has 1: total still 8
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks={"w": jnp.asarray(bad)})
    with pytest.raises(ValueError, match=r"'w' has 3 active entries in row 0 of its 4 \(NM\(n=2, m=4"):
        tx.init(params)
