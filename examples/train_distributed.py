"""Sparse training on many devices: ``pmap``, ``jit`` over a sharded mesh, and several processes.

RigL (or SET) trains an MLP on scikit-learn's digits, data-parallel. Every replica derives the
same masks because a mask update reads only replicated inputs: the all-reduced gradients, the
params, and a key folded with the step. The script checks that at the end with
``jaxsparse.distributed.assert_replicas_equal`` and says so, e.g. "all 8 replicas hold identical
masks, params and optimizer state (fingerprint 0x...)". Multi-process workers mute gloo's
connection lines (see ``mute_native_stdout``).

On one CPU machine the devices are simulated (``--devices``); on a GPU/TPU host drop that flag.

  python examples/train_distributed.py pmap --devices 8
  python examples/train_distributed.py mesh --devices 8 --model-parallel 2
  python examples/train_distributed.py multihost --launch 2 --devices 2     # 2 local processes

A real multi-host job starts one process per host, each with the same coordinator::

  python examples/train_distributed.py multihost --coordinator HOST0:1234 --num-processes N --process-id I
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["pmap", "mesh", "multihost"])
    parser.add_argument("--method", choices=["rigl", "set"], default="rigl")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--update-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the data axis")
    parser.add_argument("--devices", type=int, default=None, help="simulate this many CPU devices per process")
    parser.add_argument("--model-parallel", type=int, default=1, help="mesh mode: shard hidden units this many ways")
    parser.add_argument("--launch", type=int, default=None, help="multihost: start this many local processes")
    parser.add_argument("--coordinator", default="127.0.0.1:12355")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write this process's results as JSON here")
    return parser.parse_args(argv)


def _launch_local(args: argparse.Namespace) -> int:
    """Starts ``args.launch`` copies of this script on loopback and waits for all of them."""
    base = [sys.executable, __file__, "multihost", "--num-processes", str(args.launch)]
    base += ["--coordinator", args.coordinator, "--method", args.method, "--steps", str(args.steps)]
    base += ["--sparsity", str(args.sparsity), "--update-every", str(args.update_every)]
    base += ["--batch-size", str(args.batch_size)]
    if args.devices:
        base += ["--devices", str(args.devices)]
    workers = []
    for process_id in range(args.launch):
        command = base + ["--process-id", str(process_id)]
        if args.out:
            command += ["--out", str(args.out.with_name(f"{args.out.stem}_{process_id}{args.out.suffix}"))]
        workers.append(subprocess.Popen(command))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the workers
    try:
        return max(worker.wait() for worker in workers)
    finally:
        for worker in workers:
            worker.kill()


def mute_native_stdout() -> None:
    """Points file descriptor 1 at ``/dev/null`` and keeps Python's ``sys.stdout`` on a copy of it.

    gloo writes "[Gloo] Rank r is connected to n peer ranks. Expected number of connected peer
    ranks is : n" with ``std::cout`` each time it connects a group of processes
    (``gloo/transport/tcp/context.cc``), which jax does lazily, mid-training, for each set of
    devices a collective spans. No flag or environment variable turns those lines off, so native
    code loses the descriptor; this script's own output keeps its copy.
    """
    sys.stdout.flush()
    kept = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = os.fdopen(kept, "w", buffering=1)


def agreement(results: dict) -> str:
    """The sentence that reports the final check of :func:`_train` in words."""
    where = f" (each sharded over {results['shards']} devices)" if results["shards"] > 1 else ""
    where += f" on {results['processes']} processes" if results["processes"] > 1 else ""
    return (
        f"all {results['replicas']} replicas{where} hold identical masks, params and optimizer state "
        f"(fingerprint {results['fingerprint']})"
    )


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.mode == "multihost" and args.launch:
        return _launch_local(args)
    if args.devices:  # read by XLA when the backend starts, so before jax is used
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"

    import jax

    if args.mode == "multihost":
        mute_native_stdout()
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    results = _train(args)
    if jax.process_index() == 0:
        print(agreement(results))
    if jax.process_index() == 0 or args.out:
        print(json.dumps(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results))
    if args.mode == "multihost":
        jax.distributed.shutdown()
    return 0


def wait_if_cpu(tree) -> None:
    """On CPU, waits for the step that produces ``tree``; elsewhere returns at once.

    With 8 simulated CPU devices on 2 cores and all 600 steps dispatched ahead, XLA's CPU client
    deadlocked in an all-reduce (its participants share one thread pool; most likely the pool ran
    out). Waiting for each step avoided it in every mode. GPUs and TPUs keep dispatching ahead.
    """
    import jax

    if jax.default_backend() == "cpu":
        jax.block_until_ready(tree)


def _train(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxsparse as jsp
    from jaxsparse.data import eval_batches, load_dataset, train_batches
    from jaxsparse.distributed import assert_replicas_equal, fingerprint, replicate, state_shardings, unreplicate
    from jaxsparse.models import create_model

    data = load_dataset("digits")
    model = create_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape)
    params = model.init(jax.random.key(0), jnp.zeros((1, *data.input_shape)), train=False)["params"]
    factory = {"rigl": jsp.rigl, "set": jsp.set_}[args.method]
    algorithm = factory(
        sparsity=args.sparsity, update_every=args.update_every, end_step=int(0.75 * args.steps), dense_first_layer=False
    )
    # The key is the same on every device and process: never fold a device or process index into it.
    tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), algorithm, key=jax.random.key(1))
    batches = train_batches(data, batch_size=args.batch_size, seed=0)

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["inputs"], train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    if args.mode == "pmap":
        n = jax.local_device_count()

        def step(params, state, batch):
            grads = jax.grad(loss_fn)(jsp.forward_params(params, state), batch)
            grads = jax.lax.pmean(grads, "data")  # every replica now holds the same gradients
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = tx.init(params)
        params = jsp.apply_masks(params, jsp.masks_of(state))
        params, state = replicate((params, state), axis_name="data")
        step = jax.pmap(step, axis_name="data", donate_argnums=(0, 1))
        for t in range(args.steps):
            batch = jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batches[t])
            params, state = step(params, state, batch)
            wait_if_cpu(params)
        assert_replicas_equal((params, state), stacked=True, name="(params, state)")
        replicas, shards = n, 1
        params, state = unreplicate(params), unreplicate(state)
    else:
        model_axis = args.model_parallel if args.mode == "mesh" else 1
        mesh = jax.make_mesh(
            (jax.device_count() // model_axis, model_axis), ("data", "model"), axis_types=(AxisType.Auto,) * 2
        )
        # Megatron-style model parallelism: the first kernel's columns and the second's rows.
        specs = jax.tree.map(lambda _: P(), params)
        specs["Dense_0"] = {"kernel": P(None, "model"), "bias": P("model")}
        specs["Dense_1"]["kernel"] = P("model", None)
        param_shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)
        shardings = state_shardings(jax.eval_shape(tx.init, params), params, param_shardings)
        batch_sharding = NamedSharding(mesh, P("data"))

        def step(params, state, batch):
            grads = jax.grad(loss_fn)(jsp.forward_params(params, state), batch)  # jit all-reduces them
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = jax.jit(tx.init, out_shardings=shardings)(params)
        params = jax.jit(jsp.apply_masks, out_shardings=param_shardings)(params, jsp.masks_of(state))
        step = jax.jit(step, out_shardings=(param_shardings, shardings), donate_argnums=(0, 1))
        rows = args.batch_size // jax.process_count()
        for t in range(args.steps):
            # Each process loads only its own rows of the global batch.
            local = jax.tree.map(lambda x: x[jax.process_index() * rows : (jax.process_index() + 1) * rows], batches[t])
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x), local)
            params, state = step(params, state, batch)
            wait_if_cpu(params)
        assert_replicas_equal((params, state), name="(params, state)")
        replicas, shards = mesh.shape["data"], model_axis
        # Evaluate with a fully replicated copy (small here); a large model would evaluate sharded.
        params, state = jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))((params, state))

    sparse_params = jsp.forward_params(params, state)
    correct = total = 0
    for batch in eval_batches(data, batch_size=256):
        logits = model.apply({"params": sparse_params}, batch["inputs"], train=False)
        correct += int((np.asarray(logits).argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])

    def digest(tree) -> str:
        """SHA-256 of this process's own copy of ``tree``, read on the host: equal iff bit-identical."""
        sha = hashlib.sha256()
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            sha.update(np.asarray(leaf.addressable_shards[0].data).tobytes())
        return sha.hexdigest()

    return {
        "mode": args.mode,
        "process": jax.process_index(),
        "devices": jax.device_count(),
        "method": args.method,
        "test_accuracy": correct / total,
        "sparsity": jsp.total_sparsity(state),
        "replicas": replicas,
        "shards": shards,
        "processes": jax.process_count(),
        # The same on every process: one checksum of the whole (now replicated) masks, params and state.
        "fingerprint": f"0x{int(jax.jit(fingerprint)((params, state))):08x}",
        "sha256": {
            "masks": digest(jsp.masks_of(state)),
            "params": digest(params),
            "optimizer_state": digest(state.inner_state),
            "step_and_key": digest((state.step, state.key)),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
