"""Training on many devices: state shardings, replication for ``pmap``, and replica checks.

jaxsparse needs no special mode for data or model parallelism: a mask update is a pure function
of replicated inputs, so every replica computes the same masks, and its selection works shard by
shard (see ``docs/distributed.md`` for what each update communicates). This package gives the
pieces a training loop needs around that:

* :func:`state_shardings` -- shardings for the ``sparsify`` state from the params' shardings.
* :func:`replicate` / :func:`unreplicate` -- ``pmap``'s stacked copies.
* :func:`fingerprint`, :func:`replicas_agree`, :func:`assert_replicas_equal` -- cheap checks that
  replicas (devices, hosts) hold bit-identical masks, params and optimizer state.
"""

from jaxsparse.distributed._fingerprint import fingerprint, replicas_agree
from jaxsparse.distributed._replicas import assert_replicas_equal, replicate, unreplicate
from jaxsparse.distributed._sharding import state_shardings

__all__ = [
    "assert_replicas_equal",
    "fingerprint",
    "replicas_agree",
    "replicate",
    "state_shardings",
    "unreplicate",
]
