"""What a trained toy model stores, and how: the quantities of Elhage et al. (2022).

W is stored [n, m]: row W_i is feature i's direction in the hidden space.
- WtW = W W^T [n, n] (the paper's W^T W in its column convention);
- norms ||W_i||;
- superposition_i = sum_{j != i} (W_i_hat . W_j)^2;
- feature dimensionality D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2;
- dimensions per feature D* = m / ||W||_F^2;
- neuron share_i = max_j W_ij^2 / ||W_i||^2: 1 when feature i lies on one hidden unit
  (a privileged basis, what a hidden ReLU favours), 1/m when spread evenly over all m.
All in float64 on the host.
"""

from __future__ import annotations

import functools

import numpy as np

# Uniform polytopes and their feature dimensionality (paper, "Feature geometry").
FRACTIONS = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375, "1/3": 1 / 3}


def gram(w_NM) -> np.ndarray:
  w = np.asarray(w_NM, np.float64)
  return w @ w.T


def feature_norms(w_NM) -> np.ndarray:
  return np.linalg.norm(np.asarray(w_NM, np.float64), axis=1)


def _interference(w_NM) -> tuple[np.ndarray, np.ndarray]:
  w = np.asarray(w_NM, np.float64)
  norms = np.linalg.norm(w, axis=1)
  unit = w / np.maximum(norms, 1e-6)[:, None]
  return norms, (unit @ w.T) ** 2     # [i, j] = (W_i_hat . W_j)^2


def superposition(w_NM) -> np.ndarray:
  norms, inter = _interference(w_NM)
  return inter.sum(1) - np.diag(inter)


def feature_dimensionality(w_NM) -> np.ndarray:
  norms, inter = _interference(w_NM)
  denom = inter.sum(1)
  return np.where(denom > 0, norms ** 2 / np.where(denom > 0, denom, 1.0), 0.0)


def dims_per_feature(w_NM) -> float:
  w = np.asarray(w_NM, np.float64)
  return float(w.shape[1] / np.sum(w ** 2))


def projection_error(w_NM) -> float:
  """||G^2 - G||_F for G = W W^T: zero exactly when G is an orthogonal projection, i.e. the
  stored features span orthogonal directions without interference (what a linear model
  learns: PCA of the importance-weighted features); positive under superposition."""
  g = gram(w_NM)
  return float(np.linalg.norm(g @ g - g))


def neuron_share(w_NM) -> np.ndarray:
  """max_j W_ij^2 / ||W_i||^2 per feature (0 for a zero row)."""
  w2 = np.asarray(w_NM, np.float64) ** 2
  total = w2.sum(1)
  return np.where(total > 0, w2.max(1) / np.where(total > 0, total, 1.0), 0.0)


def represented(w_NM, threshold: float = 0.5) -> np.ndarray:
  """Features whose direction has norm above `threshold` (learned features have ~1)."""
  return feature_norms(w_NM) > threshold


def summarize(w_NM, b_N) -> dict:
  """Every per-instance quantity the results file and figures use."""
  norms = feature_norms(w_NM)
  g = gram(w_NM)
  rep = norms > 0.5
  off = g[np.ix_(rep, rep)] - np.diag(np.diag(g[np.ix_(rep, rep)]))
  return {
      "dims_per_feature": dims_per_feature(w_NM),
      "feature_dimensionality": feature_dimensionality(w_NM).tolist(),
      "feature_norms": norms.tolist(),
      "superposition": superposition(w_NM).tolist(),
      "neuron_share": neuron_share(w_NM).tolist(),
      "bias": np.asarray(b_N, np.float64).tolist(),
      "n_represented": int(rep.sum()),
      "frobenius_sq": float(np.sum(np.asarray(w_NM, np.float64) ** 2)),
      "projection_error": projection_error(w_NM),
      "max_offdiag_represented": float(np.abs(off).max()) if rep.sum() > 1 else 0.0,
  }


def fraction_counts(dims, tol: float = 0.02, min_dim: float = 0.1) -> dict:
  """How many D_i (>= min_dim) lie within tol of each named fraction."""
  d = np.asarray(dims, np.float64)
  d = d[d >= min_dim]
  return {k: int(np.sum(np.abs(d - v) <= tol)) for k, v in FRACTIONS.items()}


def histogram_peaks(dims, bins: np.ndarray | None = None, min_dim: float = 0.1) -> list[float]:
  """Centres of local maxima of the D_i histogram (bins of width 0.02 on [0, 1.02))."""
  d = np.asarray(dims, np.float64)
  d = d[d >= min_dim]
  bins = np.arange(0.0, 1.04, 0.02) if bins is None else bins
  counts, edges = np.histogram(d, bins=bins)
  centres = 0.5 * (edges[1:] + edges[:-1])
  peaks = []
  for i, c in enumerate(counts):
    left = counts[i - 1] if i > 0 else -1
    right = counts[i + 1] if i + 1 < len(counts) else -1
    if c >= 3 and c >= left and c > right:
      peaks.append(float(centres[i]))
  return peaks


def phase_of(w_NM, threshold: float = 0.5) -> int:
  """Two-feature phase (n=2, m=1): 0 feature 2 not represented, 1 feature 2 takes the
  dimension alone, 2 both features share it (superposition, antipodal)."""
  norms = feature_norms(w_NM)
  on = norms > threshold
  if on[0] and on[1]:
    return 2
  if on[1]:
    return 1
  return 0


# ------------------------------------------------------------------ two-feature phase theory

@functools.lru_cache(maxsize=4)
def _legendre_01(n_nodes: int) -> tuple[np.ndarray, ...]:
  """Gauss-Legendre nodes and weights on [0, 1], and their tensor grid."""
  t, w = np.polynomial.legendre.leggauss(n_nodes)
  u, wu = 0.5 * (t + 1.0), 0.5 * w
  u1, u2 = np.meshgrid(u, u, indexing="ij")
  return u, wu, u1, u2, np.outer(wu, wu)


def two_feature_loss(w_N, b_N, density: float, rel_importance: float,
                     n_nodes: int = 64) -> float:
  """Exact expected loss of the n=2, m=1 ReLU toy model (W = w_N[:, None], bias b_N).

  x_f = z_f u_f with z_f ~ Bernoulli(density) and u_f ~ U[0, 1) independent (the training
  sampler's law); loss = mean over the two features of I_f (x_f - ReLU(w_f (w . x) + b_f))^2
  with I = (1, rel_importance), the normalisation of toy.weighted_mse. The expectation is
  a sum over the four on/off patterns; the integrals over the active u's use Gauss-Legendre
  nodes on [0, 1] (64 nodes: ~1e-6 relative, the ReLU kinks limit the order).
  """
  w1, w2 = (float(v) for v in np.ravel(w_N))
  b1, b2 = (float(v) for v in np.ravel(b_N))
  p = float(density)
  u, wu, u1, u2, w12 = _legendre_01(n_nodes)
  zero = np.zeros_like(u)

  def mean_sq(x1, x2, weight):
    h = w1 * x1 + w2 * x2
    e1 = x1 - np.maximum(w1 * h + b1, 0.0)
    e2 = x2 - np.maximum(w2 * h + b2, 0.0)
    return float(np.sum(weight * 0.5 * (e1 ** 2 + rel_importance * e2 ** 2)))

  return ((1 - p) ** 2 * mean_sq(0.0, 0.0, 1.0)
          + p * (1 - p) * (mean_sq(u, zero, wu) + mean_sq(zero, u, wu))
          + p * p * mean_sq(u1, u2, w12))


def two_feature_optimum(density: float, rel_importance: float, seed: int = 0,
                        n_random_starts: int = 2) -> dict:
  """Global minimum of two_feature_loss over (w1, w2, b1, b2) by scipy L-BFGS-B from the
  three candidate solutions of the paper (feature 1 alone, feature 2 alone, the antipodal
  pair; both signs) and a few random starts. Returns the phase (phase_of), loss, w, b.

  This is the theoretical phase diagram the trained models are compared with: the exact
  expected loss, minimised by a generic optimiser, independent of the sampler, the
  Adam(W) trajectory and the training code.
  """
  from scipy import optimize
  rng = np.random.default_rng(seed)
  starts = [(1, 0), (0, 1), (1, -1), (-1, 1)]
  starts = [np.array([a, c, 0.0, 0.0], float) for a, c in starts]
  starts += [0.7 * rng.standard_normal(4) for _ in range(n_random_starts)]
  f = lambda t: two_feature_loss(t[:2], t[2:], density, rel_importance)
  best = min((optimize.minimize(f, s, method="L-BFGS-B") for s in starts),
             key=lambda r: r.fun)
  w, b = best.x[:2], best.x[2:]
  return {"phase": phase_of(w[:, None]), "loss": float(best.fun), "w": w.tolist(),
          "b": b.tolist()}
