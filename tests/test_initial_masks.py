"""``jaxsparse train --init CRITERION``: masks scored at initialisation start the run, and the summary says how."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxsparse as jsp
from jaxsparse.training import Config, ConfigError, compilation_cache, train

RUN = dict(dataset="digits", model="mlp", steps=6, batch_size=32, eval_every=6, update_every=2, sparsity=0.9)


@pytest.fixture(scope="module", autouse=True)
def _shared_compilations(tmp_path_factory):
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache-init"):
        yield


def test_static_trains_on_the_global_magnitude_masks_and_the_summary_counts_collapsed_layers(tmp_path):
    result = train(Config(method="static", init="magnitude", **RUN, out_dir=str(tmp_path)), progress=False)
    first = jax.tree.leaves(result.masks)
    # Static masks never change, so the final masks are the scored ones: recompute them here.
    from jaxsparse.data import load_dataset
    from jaxsparse.models import create_model

    dataset = load_dataset("digits")
    model = create_model("mlp", num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    init_key, _ = jax.random.split(jax.random.key(0))
    params = model.init(init_key, np.zeros((1, *dataset.input_shape), np.float32), train=False)["params"]
    expected = jsp.pruning_at_init.prune_at_init("magnitude", params, result.opt_state.algorithm.layout, key=init_key)
    kernels = [np.abs(np.asarray(leaf)) for leaf in jax.tree.leaves(params) if np.ndim(leaf) == 2]
    kept = [np.asarray(m) for m in first]
    assert sum(int(m.sum()) for m in kept) == sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(expected))
    # One global threshold: every kept |w| is at least every pruned one.
    assert min(k[m].min() for k, m in zip(kernels, kept, strict=True) if m.any()) >= max(
        k[~m].max() for k, m in zip(kernels, kept, strict=True)
    )
    init = result.report["init"]
    assert init["criterion"] == "magnitude" and init["scope"] == "global"
    assert init["layer_collapse"] == len(init["collapsed_layers"]) == sum(not m.any() for m in kept)
    assert abs(result.report["sparsity"] - 0.9) < 1e-3


def test_rigl_from_synflow_masks_keeps_their_per_layer_counts(tmp_path):
    config = Config(method="rigl", init="synflow", init_rounds=5, **RUN, out_dir=str(tmp_path))
    result = train(config, progress=False)
    layout = result.opt_state.algorithm.layout
    counts = [int(np.asarray(m).sum()) for m in jax.tree.leaves(result.masks)]
    planned = [plan.active for plan in layout.plan(result.params) if plan is not None]
    assert counts == planned  # the layout fitted to the SynFlow masks, kept through RigL's updates
    assert result.report["init"]["criterion"] == "synflow"


def test_init_errors_name_the_fix():
    with pytest.raises(ConfigError, match="--method gap chooses its own initial masks; --init works with static"):
        Config(method="gap", init="snip")
    with pytest.raises(ConfigError, match="init='snap' is not known"):
        Config(method="static", init="snap")
    with pytest.raises(ConfigError, match="init_scope='both' is not known"):
        Config(method="static", init="snip", init_scope="both")
