"""Synthetic sparse features for toy superposition models, a pure function of (key, step).

Each feature is zero with probability S (the sparsity), else uniform on [0, 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(key, batch: int, n: int, sparsity):
  """x [batch, n] with P(x_f = 0) = sparsity, else U[0, 1)."""
  k_on, k_val = jax.random.split(key)
  on = jax.random.uniform(k_on, (batch, n)) >= sparsity
  return jnp.where(on, jax.random.uniform(k_val, (batch, n)), 0.0)


def sample_instances(key, ids_I, batch: int, n: int, sparsity_I):
  """x [I, batch, n]; instance i draws from fold_in(key, ids_I[i]) at its own sparsity."""
  return jax.vmap(lambda i, s: sample(jax.random.fold_in(key, i), batch, n, s))(ids_I, sparsity_I)
