"""Tests of jaxcode.estimators.multifractal (sandbox, NeuroMFA, paper mode, box covering).

References we did not write: a plain NumPy/SciPy (scipy.stats.linregress) loop of NeuroMFA's
released `wnfd_llm` as described in notes/neuromfa.md §1.3; analytic dimensions of
(u,v)-flowers (ln(u+v)/ln u), the Sierpinski gasket (monofractal) and the
Song-Havlin-Makse model; the algebraic identity tau_N(q) = tau_SB(q+1); synthetic per-node
power laws with known exponents.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxcode.estimators import graph, multifractal as mf, networks
from jaxcode.errors import ConfigError


# ---------------------------------------------------------------- paper-compatible mode

def _released_tau(out_dists, T, qs):
  """NumPy loop of the released algorithm: per node, one-hop distances in (1, T]."""
  grows = []
  for d in out_dists:
    g = [x for x in d if 1 < x <= T]
    if len(g) > 10:
      grows.append(np.round(np.asarray(g)))
  R = np.unique(np.concatenate(grows))
  r_max = R.max()
  Z = np.zeros((len(qs), len(R)))
  for g in grows:
    n_r = np.array([1 + np.sum(g <= r) for r in R], float)
    p = n_r / n_r[-1]
    for i, q in enumerate(qs):
      Z[i] += p ** q
  x = np.log(R / r_max)
  return np.array([stats.linregress(x, np.log(Z[i])).slope for i in range(len(qs))])


def test_paper_mode_equals_numpy_released_algorithm():
  rng = np.random.default_rng(0)
  kernels = [rng.normal(0, 0.02, size=s) for s in [(40, 60), (60, 30), (30, 50), (50, 25)]]
  T = 150
  out_dists = [1.0 / np.abs(row) for k in kernels for row in k]
  ref = _released_tau(out_dists, T, mf.PAPER_QS)
  with jax.enable_x64(True):
    hist = graph.one_hop_layered_histograms(kernels, T, dtype=jnp.float64)
    spec = mf.paper_spectrum(hist, method="grouped")
    slow = mf.paper_spectrum(hist, method="logsumexp")
    tau = np.asarray(spec.tau)
    alpha_fd, alpha = np.asarray(spec.alpha_fd), np.asarray(spec.alpha)
    np.testing.assert_allclose(np.asarray(slow.tau), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(slow.alpha), alpha, rtol=0, atol=1e-10)
  np.testing.assert_allclose(tau, ref, rtol=0, atol=1e-10)
  np.testing.assert_allclose(alpha_fd, np.diff(ref) / 0.1, atol=1e-8)
  # exact alpha(q) = dtau/dq lies between the neighbouring forward differences' values
  assert abs(float(spec.alpha0) - alpha[30]) < 1e-12
  assert np.all(np.abs(alpha[:-1] - alpha_fd) < 0.2 * np.abs(alpha_fd).max())


def test_neuromfa_global_equals_sandbox_shifted():
  """tau_NeuroMFA(q) = tau_sandbox(q+1) on a connected graph with c_i = N."""
  a = networks.uv_flower(2, 2, 4)
  n = a.shape[0]
  radii = np.arange(1.0, 17.0)
  counts = graph.sparse_ball_counts(a, radii, np.arange(n))
  qs = np.round(np.arange(-3, 3.01, 0.5), 2)
  with jax.enable_x64(True):
    nm = mf.neuromfa_from_counts(counts, radii, qs, "global", n_nodes=n)
    sb = mf.sandbox_from_counts(counts, radii, n, qs + 1)
    np.testing.assert_allclose(np.asarray(nm.tau), np.asarray(sb.tau), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(nm.alpha), np.asarray(sb.alpha), atol=1e-10)
    # alpha0 = D1 (information dimension), f peaks at 0
    d1 = float(np.asarray(sb.dims)[list(qs + 1).index(1.0)])
    assert abs(float(nm.alpha0) - d1) < 1e-10
    assert abs(float(np.asarray(nm.f)[list(qs).index(0.0)])) < 1e-10


def test_per_node_power_laws_give_mean_exponent():
  """p_i(r) = (r/R)^{D_i}: alpha(0) = mean D_i exactly."""
  rng = np.random.default_rng(1)
  D = rng.uniform(0.8, 1.6, size=50)
  radii = np.arange(1.0, 33.0)
  with jax.enable_x64(True):
    logp = D[:, None] * np.log(radii / radii[-1])[None]
    spec = mf.spectrum_from_logp(logp, radii, np.linspace(-3, 3, 13))
    assert abs(float(spec.alpha0) - D.mean()) < 1e-10
    a = np.asarray(spec.alpha)
  assert D.min() - 1e-9 <= a.min() and a.max() <= D.max() + 1e-9
  assert np.all(np.diff(a) <= 1e-12)   # alpha(q) non-increasing


# ---------------------------------------------------------------- validation networks

def test_sandbox_flowers_match_box_dimension():
  qs = np.arange(-2.0, 5.0)
  f22 = networks.uv_flower(2, 2, 7)
  assert f22.shape[0] == networks.uv_flower_size(2, 2, 7) == 10924
  s = mf.sandbox_spectrum(f22, qs, np.arange(2.0, 17.0), centres=1000, seed=0)
  d0 = float(np.asarray(s.dims)[2])
  assert abs(d0 - 2.0) / 2.0 < 0.10, d0
  f33 = networks.uv_flower(3, 3, 5)
  assert f33.shape[0] == networks.uv_flower_size(3, 3, 5) == 6222
  s = mf.sandbox_spectrum(f33, qs, np.arange(2.0, 31.0), centres=1000, seed=0)
  d0 = float(np.asarray(s.dims)[2])
  assert abs(d0 - networks.uv_flower_dimension(3, 3)) / 1.631 < 0.10, d0
  # D(q) non-increasing in q and D(1) (information dimension) between D(0) and D(2)
  dims = np.asarray(s.dims)
  assert np.all(np.diff(dims) <= 1e-9)
  assert np.all(np.asarray(s.r2) > 0.99)   # power laws over the window (q = 1: tau = 0 exactly)


def test_box_covering_memb_flowers():
  f22 = networks.uv_flower(2, 2, 7)
  assert abs(mf.box_covering_dimension(f22, [9, 17, 33], "memb") - 2.0) / 2.0 < 0.10
  f33 = networks.uv_flower(3, 3, 5)
  d = mf.box_covering_dimension(f33, [7, 19, 55], "memb")
  assert abs(d - 1.631) / 1.631 < 0.10, d


@pytest.mark.parametrize("method", ["gc", "cbb"])
def test_box_covering_greedy_methods_small_flowers(method):
  d = mf.box_covering_dimension(networks.uv_flower(2, 2, 5), [3, 5, 9, 17], method, repeats=2)
  assert abs(d - 2.0) / 2.0 < 0.10, d
  d = mf.box_covering_dimension(networks.uv_flower(3, 3, 4), [4, 10, 28], method, repeats=2)
  assert abs(d - 1.631) / 1.631 < 0.10, d


def test_sierpinski_gasket_is_monofractal():
  a = networks.sierpinski_gasket(7)
  assert a.shape[0] == networks.sierpinski_size(7) == 3282
  s = mf.sandbox_spectrum(a, np.arange(0.0, 5.0), np.arange(4.0, 17.0))
  dims = np.asarray(s.dims)
  assert (dims.max() - dims.min()) / dims.mean() < 0.05, dims
  assert abs(dims[0] - networks.SIERPINSKI_DIMENSION) / 1.585 < 0.10, dims


def test_shm_model_size_and_dimension():
  m, t = 2, 5
  a = networks.shm_fractal(m, t)
  assert a.shape[0] == (2 * m + 1) ** t + 1 and a.nnz == 2 * (2 * m + 1) ** t
  d = mf.box_covering_dimension(a, [3, 9, 27], "memb")
  assert abs(d - networks.shm_dimension(m)) / networks.shm_dimension(m) < 0.15, d


# ---------------------------------------------------------------- bad input

def test_bad_inputs_raise_one_line():
  a = networks.uv_flower(2, 2, 2)
  with pytest.raises(ConfigError, match="radi"):
    mf.sandbox_spectrum(a, [0.0, 1.0], [])
  with pytest.raises(ConfigError, match="radi"):
    mf.sandbox_spectrum(a, [0.0, 1.0], [2.0])
  with pytest.raises(ConfigError, match="qs"):
    mf.sandbox_spectrum(a, [], [1.0, 2.0])
  with pytest.raises(ConfigError, match="method"):
    mf.box_covering_dimension(a, [2, 3], "nope")
  with pytest.raises(ConfigError, match="window"):
    mf.spectrum_from_logp(np.zeros((3, 4)), [1.0, 2.0, 3.0, 4.0], [0.0], window=(5, 9))
  for fn in (lambda: mf.sandbox_spectrum(a, [], []), lambda: mf.box_counts(a, [3], "gc")):
    with pytest.raises(ConfigError) as e:
      fn()
    assert "\n" not in str(e.value)
