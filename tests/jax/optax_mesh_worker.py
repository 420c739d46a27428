"""Runs `nadam.optax` on a 2-device CPU mesh with sharded parameters, and unsharded; writes both.

Usage: python optax_mesh_worker.py <in.npz> <out.npz>. The parent sets
XLA_FLAGS=--xla_force_host_platform_device_count=2 (it must be set before JAX starts, so this
runs in its own process). Input: initial parameters `p/<name>` and stacked gradients
`g/<name>`. Output: the parameters after the step-by-step jitted run (`sharded/<name>`,
`unsharded/<name>`), after one scan (`scanned/<name>`), the Keras weights of each run, and the
shardings seen.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nadam.optax import from_keras_weights, nadam, to_keras_weights


def main(source: str, target: str) -> None:
    data = np.load(source)
    names = sorted({k.split("/", 1)[1] for k in data if k.startswith("p/")})
    params = {n: data[f"p/{n}"] for n in names}
    grads = {n: data[f"g/{n}"] for n in names}
    steps = next(iter(grads.values())).shape[0]
    assert len(jax.devices()) == 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    # Rows of "w" split over the devices; "b" split too; the scalar "s" replicated.
    specs = {"w": P("d", None), "b": P("d"), "s": P()}
    shardings = {n: NamedSharding(mesh, specs[n]) for n in names}
    tx = nadam(learning_rate=0.01)

    def step(p, state, g):
        updates, state = tx.update(g, state)
        return optax.apply_updates(p, updates), state

    out = {}
    for label, place in (("sharded", True), ("unsharded", False)):
        p = {n: jax.device_put(params[n], shardings[n]) if place else jnp.asarray(params[n])
             for n in names}
        state = tx.init(p)
        if place:
            out["m_sharding_ok"] = np.asarray(all(
                state.m[n].sharding.is_equivalent_to(shardings[n], params[n].ndim)
                for n in names))
        jitted = jax.jit(step, donate_argnums=(0, 1))
        for i in range(steps):
            g = {n: jax.device_put(grads[n][i], shardings[n]) if place else grads[n][i]
                 for n in names}
            p, state = jitted(p, state, g)
        if place:
            out["p_sharding_ok"] = np.asarray(all(
                p[n].sharding.is_equivalent_to(shardings[n], params[n].ndim) for n in names))
            # A state restored from Keras's layout is placed like its parameters.
            restored = from_keras_weights(to_keras_weights(state, p), p)
            out["restored_sharding_ok"] = np.asarray(all(
                restored.m[n].sharding.is_equivalent_to(shardings[n], params[n].ndim)
                and restored.v[n].sharding.is_equivalent_to(shardings[n], params[n].ndim)
                for n in names))
        for n in names:
            out[f"{label}/{n}"] = np.asarray(p[n])
        for k, w in enumerate(to_keras_weights(state, p)):
            out[f"{label}_weights/{k}"] = w

    def body(carry, g):
        p, state = carry
        return step(p, state, g), None

    p0 = {n: jax.device_put(params[n], shardings[n]) for n in names}
    gs = {n: jax.device_put(grads[n], NamedSharding(mesh, P(None, *specs[n]))) for n in names}
    (p, _), _ = jax.jit(lambda p0, gs: lax.scan(body, (p0, tx.init(p0)), gs))(p0, gs)
    for n in names:
        out[f"scanned/{n}"] = np.asarray(p[n])
    np.savez(target, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
