"""`nadam.optax`: Keras 2's Nadam as an `optax.GradientTransformation`, exact under `jax.jit`.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from nadam.optax import nadam
    >>> params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    >>> tx = nadam(learning_rate=1e-3)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.asarray([0.1, -0.5, 2.0])}
    >>> updates, state = tx.update(grads, state)
    >>> optax.apply_updates(params, updates)["w"]  # Keras 2's first step, bit for bit
    Array([ 0.99894357, -1.9989436 ,  2.9989436 ], dtype=float32)

`to_keras_weights` / `from_keras_weights` carry the state to and from Keras's `get_weights()`
layout (tf_keras's legacy Nadam, `nadam.Nadam`, `nadam.torch.Nadam`).
"""

from nadam.integrations.optax import NadamState, from_keras_weights, nadam, to_keras_weights

__all__ = ["NadamState", "from_keras_weights", "nadam", "to_keras_weights"]
