"""Single-neuron theory, drift statistics and per-layer codes (analysis/coding_theory.py,
analysis/coding_schemes_drift.py, analysis/coding_schemes.py layer statistics).

References we did not write: the linear theory's closed form U = s/2 + (s^2/4 + s G)^{1/2}
(derived by hand, module docstring) against the generic Monte Carlo solver; the finite-b
linear theory on orthogonal inputs against the scalar equation 1/u = 1/s - n_c/(u + 1/b)^2
solved by scipy's brentq; drift statistics on hand-built samples whose answers are known
by construction; kernel alignment against its definition on hand kernels.
"""

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from jaxcode.analysis import coding_schemes as cs
from jaxcode.analysis import coding_schemes_drift as dr
from jaxcode.analysis import coding_theory as th
from jaxcode.errors import ConfigError


def test_linear_mc_solver_matches_closed_form():
  """The generic solver (Langevin on single neurons, damped fixed point), run with linear phi,
  recovers the closed-form readout covariance U and the training fit <z a^T> = Y."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 10))
  k = x @ x.T / 10
  y = np.eye(2)[np.arange(6) % 2]
  s_a = 4.0
  want = th.linear_readout_cov(k, y, s_a)
  got = th.solve(k, y, s_a, math.inf, "linear", n_neurons=256, outer=15, inner=150, seed=1)
  np.testing.assert_allclose(np.diag(got["U"]), np.diag(want), rtol=0.06)
  assert np.mean(got["residual"][-5:]) < 0.25
  # closed form satisfies its own quadratic U^2 - s U = s Y^T K^-1 Y
  g = y.T @ np.linalg.solve(k, y)
  np.testing.assert_allclose(want @ want - s_a * want, s_a * g, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("b", [10.0, 1500.0, math.inf])
def test_linear_theory_orthogonal_inputs_scalar_equation(b):
  """K = I, Y one-hot with n_c points per class: U is diagonal with u_c solving
  1/u = 1/s - n_c/(u + 1/b)^2 (scipy brentq on the branch u > largest root of the boundary)."""
  counts = [8, 4, 4]
  y = np.eye(3)[np.repeat(np.arange(3), counts)]
  s_a = 0.032
  res = th.linear_theory(np.eye(16), y, s_a, b)
  eps = 0.0 if math.isinf(b) else 1 / b
  for c, n in enumerate(counts):
    f = lambda u: 1 / u - 1 / s_a + n / (u + eps) ** 2
    u_c = brentq(f, np.sqrt(n * s_a) * 0.5, 100.0)
    assert res["U"][c, c] == pytest.approx(u_c, rel=1e-8)
    # mean training prediction of class c's points: u/(u + 1/b)
    assert res["train_mean"][y[:, c] == 1, c] == pytest.approx(u_c / (u_c + eps), rel=1e-8)
  assert abs(res["U"][0, 1]) < 1e-10


def test_theory_refuses_relu():
  with pytest.raises(ConfigError, match="relu"):
    th.solve(np.eye(3), np.eye(3), 1.0, 10.0, "relu", n_neurons=4, outer=2, inner=2)


def _samples(s, c, n, m, rng):
  a = rng.standard_normal((s, c, n, m))
  ids = rng.integers(0, 2 ** m, (s, c, n))
  con = rng.random((s, c, n))
  return a, ids, con


def test_drift_frozen_chains_and_permuted_copies():
  """Each chain frozen in time (within-chain measures 1 at every lag); chain 1 is chain 0
  with its neurons reversed (same scheme: scheme_overlap 1; identity-matched code
  agreement = fraction of neurons whose code equals that of neuron n-1-i)."""
  rng = np.random.default_rng(0)
  n, m = 12, 3
  a0 = rng.standard_normal((n, m))
  ids0 = rng.integers(0, 2, n)                     # codes 0 or 1 only
  con0 = np.arange(n, dtype=float)                 # top-3: neurons 9, 10, 11
  rev = np.arange(n)[::-1]
  a = np.stack([np.stack([a0, a0[rev]])] * 4)      # S=4, C=2
  ids = np.stack([np.stack([ids0, ids0[rev]])] * 4)
  con = np.stack([np.stack([con0, con0[rev]])] * 4)
  out = dr.drift(a, ids, con)
  for row in out["within_chain_by_lag"]:
    assert row["readout_corr"] == pytest.approx(1.0)
    assert row["code_agreement"] == 1.0 and row["top_overlap"] == 1.0
  b = out["between_chains"]
  assert b["scheme_overlap"] == pytest.approx(1.0)
  assert b["code_agreement"] == pytest.approx(np.mean(ids0 == ids0[rev]))
  assert b["top_overlap"] == 0.0                   # {9,10,11} vs {0,1,2}
  assert len(out["within_chain_by_lag"]) == 3 and out["top_overlap_chance"] == 3 / 12


def test_drift_known_decay():
  """Within a chain, sample s+1 swaps the codes of a fresh pair of neurons (all codes distinct):
  after lag L, 2L of n neurons changed code, so code agreement = 1 - 2L/n."""
  n, s = 20, 5
  ids = np.zeros((s, 1, n), int)
  ids[0, 0] = np.arange(n)
  for t in range(1, s):
    ids[t, 0] = ids[t - 1, 0]
    ids[t, 0, [2 * t - 2, 2 * t - 1]] = ids[t, 0, [2 * t - 1, 2 * t - 2]]
  a = np.ones((s, 1, n, 2)) + np.arange(n)[None, None, :, None]
  con = np.ones((s, 1, n))
  out = dr.drift(a, ids, con)
  for row in out["within_chain_by_lag"]:
    assert row["code_agreement"] == pytest.approx(1 - 2 * row["lag"] / n)
    assert row["scheme_overlap"] == pytest.approx(1.0)


def test_code_ids_and_scheme_overlap():
  binary = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], bool)
  ids = dr.code_ids(binary, np.array([True, False, True]))
  assert ids.tolist() == [5, -1, 2]
  # histograms {5: 1/2, 2: 1/2} vs {5: 1}: TV distance 1/2
  assert dr.scheme_overlap(ids, np.array([5, 5, -1])) == pytest.approx(0.5)


def test_kernel_alignment_and_layer_statistics():
  labels = np.repeat(np.arange(3), 4)
  y = np.eye(3)[labels]
  assert cs.kernel_alignment(y @ y.T, labels, 3) == pytest.approx(1.0)
  # by definition on a hand kernel: centred Frobenius cosine
  rng = np.random.default_rng(1)
  f = rng.standard_normal((12, 5))
  k = f @ f.T
  h = np.eye(12) - 1 / 12
  kc, lc = h @ k @ h, h @ y @ y.T @ h
  want = (kc * lc).sum() / np.linalg.norm(kc) / np.linalg.norm(lc)
  assert cs.kernel_alignment(k, labels, 3) == pytest.approx(want, rel=1e-12)
  # one-hot features of the class: every neuron codes exactly its class
  st = cs.layer_statistics(y + 1e-3 * rng.standard_normal(y.shape), labels, 3)
  assert st["coding_fraction"] == 1.0 and st["n_distinct_codes"] == 3
  assert st["classes_per_code"] == 1.0 and st["kernel_alignment"] > 0.99
