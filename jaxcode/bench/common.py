"""Shared benchmark helpers: timing of jitted functions and the machine's matmul rate."""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def block(x):
  return jax.block_until_ready(x)


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall seconds of fn() (results blocked on), after warm-up calls."""
  for _ in range(warmup):
    block(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def matmul_flops_per_s(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """Measured rate of an n x n x n matmul on the default device (2 n^3 FLOP each)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  secs = time_fn(lambda: f(a, b), repeats=repeats)
  return 2.0 * n ** 3 / secs


def device_summary() -> str:
  d = jax.devices()[0]
  return f"{jax.device_count()} x {d.platform}:{getattr(d, 'device_kind', '')}"
