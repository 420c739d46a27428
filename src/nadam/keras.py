"""`nadam.keras`: Keras 2's Nadam as a Keras 3 optimizer (JAX, PyTorch and TensorFlow backends).

Example:
    >>> import keras
    >>> from nadam.keras import Nadam
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=Nadam(learning_rate=1e-3), loss="mse")

Importing it imports Keras 3 (which picks its backend from `KERAS_BACKEND`); `import nadam`
does not.
"""

from nadam.integrations.keras3 import Nadam

__all__ = ["Nadam"]
