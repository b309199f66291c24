"""Validation networks with known fractal dimensions, as scipy sparse adjacency matrices.

Entries are edge lengths (1 = one hop), symmetric, no self-loops.

- (u,v)-flowers (Rozenfeld, Havlin & ben-Avraham, NJP 9:175, 2007): N_n = ((w-2) w^n + w)/(w-1),
  w = u+v; for u >= 2, d_B = ln(u+v)/ln u; diameter u^n when u = v.
- Song-Havlin-Makse fractal model (Nat. Phys. 2:275, 2006) with x = 1, e = 0: every node of
  degree k gets m*k offspring, every old link is replaced by one link between offspring of
  its ends; N_t = (2m+1)^t + 1, d_B = ln(2m+1)/ln 3.
- Sierpinski gasket graph: N_n = 3(3^n + 1)/2, diameter 2^n, D = ln 3/ln 2, monofractal.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from jaxcode.errors import ConfigError


def _symmetric(edges: np.ndarray, n: int) -> sp.csr_matrix:
  e = np.asarray(edges, np.int64).reshape(-1, 2)
  rows = np.concatenate([e[:, 0], e[:, 1]])
  cols = np.concatenate([e[:, 1], e[:, 0]])
  a = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
  a.sum_duplicates()
  a.data[:] = 1.0
  return a


def uv_flower(u: int, v: int, generation: int) -> sp.csr_matrix:
  """(u,v)-flower of the given generation (generation 0: one edge)."""
  if u < 1 or v < u or generation < 0:
    raise ConfigError(f"(u, v, generation)=({u}, {v}, {generation}): expected 1 <= u <= v, generation >= 0")
  edges = np.array([[0, 1]], np.int64)
  n = 2
  for _ in range(generation):
    new = []
    for a, b in edges:
      for length in (u, v):
        inner = np.arange(n, n + length - 1)
        n += length - 1
        path = np.concatenate([[a], inner, [b]])
        new.append(np.stack([path[:-1], path[1:]], 1))
    edges = np.concatenate(new)
  return _symmetric(edges, n)


def uv_flower_size(u: int, v: int, generation: int) -> int:
  w = u + v
  return ((w - 2) * w ** generation + w) // (w - 1)


def uv_flower_dimension(u: int, v: int) -> float:
  """Box dimension ln(u+v)/ln u (u >= 2; u = 1 flowers are not fractal)."""
  if u < 2:
    raise ConfigError(f"u={u}: (1,v)-flowers are transfractal, expected u >= 2")
  return math.log(u + v) / math.log(u)


def shm_fractal(m: int, generation: int) -> sp.csr_matrix:
  """Song-Havlin-Makse pure fractal model (x = 1, e = 0) grown from one edge."""
  if m < 1 or generation < 0:
    raise ConfigError(f"(m, generation)=({m}, {generation}): expected m >= 1, generation >= 0")
  edges = np.array([[0, 1]], np.int64)
  n = 2
  for _ in range(generation):
    new = []
    for a, b in edges:
      off_a = np.arange(n, n + m)
      off_b = np.arange(n + m, n + 2 * m)
      n += 2 * m
      new.append(np.stack([np.full(m, a), off_a], 1))
      new.append(np.stack([np.full(m, b), off_b], 1))
      new.append(np.array([[off_a[0], off_b[0]]]))
    edges = np.concatenate(new)
  return _symmetric(edges, n)


def shm_dimension(m: int) -> float:
  return math.log(2 * m + 1) / math.log(3)


def sierpinski_gasket(generation: int) -> sp.csr_matrix:
  """Sierpinski gasket graph: corners of the 3^n unit triangles, unit-length sides."""
  if generation < 0:
    raise ConfigError(f"generation={generation}: expected >= 0")
  # corners (i, j) on a triangular lattice; the gasket of side s = 2^n has 3^n unit cells
  cells = np.zeros((1, 2), np.int64)
  for g in range(generation):
    s = 2 ** g
    cells = np.concatenate([cells, cells + [s, 0], cells + [0, s]])
  corners = np.stack([cells, cells + [1, 0], cells + [0, 1]], 1)      # (C, 3, 2)
  pairs = np.concatenate([corners[:, [0, 1]], corners[:, [1, 2]], corners[:, [0, 2]]])
  side = 2 ** generation + 1
  keys = pairs[..., 0] * side + pairs[..., 1]                          # (E, 2)
  uniq, inv = np.unique(keys.ravel(), return_inverse=True)
  return _symmetric(inv.reshape(-1, 2), len(uniq))


def sierpinski_size(generation: int) -> int:
  return 3 * (3 ** generation + 1) // 2


SIERPINSKI_DIMENSION = math.log(3) / math.log(2)
