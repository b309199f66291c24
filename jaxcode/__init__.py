"""jaxcode: JAX-native tools for taking neural networks apart."""

__version__ = "0.1.0"
