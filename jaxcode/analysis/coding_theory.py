"""Self-consistent single-neuron theory of wide mean-field Bayesian networks (layer 3).

van Meegen & Sompolinsky (notes/geometry.md A.2): in the limit N -> infinity with
beta = b N (b = beta / N fixed), the posterior factorises into independent
single-neuron posteriors. For one feature-layer neuron with readout a (m) and
pre-activations z (P, on the training inputs),

  P(a, z) ~ N(a | 0, s_a I) N(z | 0, K) exp(a^T t^T phi(z)),

with K the P x P prior kernel of z (w_var x.x'/N0 for one hidden layer) and the
P x m order parameter t fixed self-consistently by the mean predictor on the
training inputs:

  <phi(z) a^T> = Y - t / b                                   (b = inf: = Y).

Derivation (ours, written out so it can be checked): insert the Fourier form of
exp(-beta/2 |f - Y|^2), f = (1/N) sum_i a_i phi(z_i); rescale the conjugate
variable by N; every term is then O(N) and the saddle point over real t is the
minimum of the convex F(t) = -tr(t^T Y) + |t|^2 / (2b) + log Z1(t), whose
gradient is the equation above. Integrating a out, a | z ~ N(s_a t^T phi(z), s_a I)
and z has density ~ N(z | 0, K) exp(s_a |t^T phi(z)|^2 / 2), so
<phi a^T> = s_a C t with C = <phi phi^T> (the posterior-averaged kernel), and the
readout second moment is U = <a a^T> = s_a I + s_a^2 t^T C t.

Linear phi: P(a) = N(a | 0, U) and (b = inf) U solves U^2 - s_a U = s_a G with
G = Y^T K^{-1} Y, i.e. U = s_a/2 + (s_a^2/4 + s_a G)^{1/2} (`linear_readout_cov`);
finite b by the Gaussian algebra of `linear_theory`. Sigmoidal (erf) phi: `solve`
finds t by damped fixed-point steps t <- t + d ((s_a C + I/b)^{-1} Y - t) with C
estimated by unadjusted Langevin on a population of independent single neurons
(whitened z = L u, K = L L^T), the chains warm-started across steps; a step whose
residual grows is halved; t and C are averaged over the second half of the steps. ReLU is not offered: its tilt grows quadratically and
the theory treats its O(sqrt N) outlier neurons separately (not implemented).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.errors import ConfigError

THEORY_NONLINEARITIES = ("linear", "erf")


# ------------------------------------------------------------ linear: closed forms

def _sym_sqrt(m: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m + m.T) / 2)
  return (v * np.sqrt(np.maximum(w, 0))) @ v.T


def linear_readout_cov(k_PP: np.ndarray, y_PM: np.ndarray, s_a: float) -> np.ndarray:
  """U = s_a/2 + (s_a^2/4 + s_a Y^T K^{-1} Y)^{1/2} (b = inf, linear phi)."""
  g = np.asarray(y_PM, np.float64).T @ np.linalg.solve(np.asarray(k_PP, np.float64), y_PM)
  m = g.shape[0]
  return s_a / 2 * np.eye(m) + _sym_sqrt(s_a ** 2 / 4 * np.eye(m) + s_a * g)


def linear_theory(k_PP: np.ndarray, y_PM: np.ndarray, s_a: float, b: float = math.inf,
                  iters: int = 500, tol: float = 1e-12) -> dict:
  """Linear phi at finite b. With R = Y - t/b the mean training prediction,
  t = K^{-1} R U^{-1} and U^2 - s_a U = s_a R^T K^{-1} R (the b = inf algebra with R
  for Y); given U, R solves the Sylvester equation b K R U + R = b K Y U exactly (in
  the eigenbases of K and U), so the iteration runs on U alone. Returns t, U,
  C = <z z^T> = K + K t U t^T K and the mean training prediction R.
  """
  k, y = np.asarray(k_PP, np.float64), np.asarray(y_PM, np.float64)
  u = linear_readout_cov(k, y, s_a)
  if math.isinf(b):
    r = y
  else:
    kw, kv = np.linalg.eigh(k)
    for _ in range(iters):
      uw, uv = np.linalg.eigh(u)
      g = b * kw[:, None] * uw[None, :]
      r = kv @ ((kv.T @ y @ uv) * g / (g + 1.0)) @ uv.T
      new = linear_readout_cov(k, r, s_a)
      done = np.abs(new - u).max() < tol * max(1.0, np.abs(u).max())
      u = new
      if done:
        break
  t = np.linalg.solve(k, r) @ np.linalg.inv(u)
  return {"t": t, "U": u, "C": k + k @ t @ u @ t.T @ k, "train_mean": r}


# ------------------------------------------------------------ generic: Monte Carlo

def _phi(name: str):
  if name == "linear":
    return lambda z: z
  if name == "erf":
    return jax.scipy.special.erf
  raise ConfigError(f"theory nonlinearity={name!r}: expected one of {THEORY_NONLINEARITIES} "
                    "(ReLU's outlier theory is not implemented)")


@functools.partial(jax.jit, static_argnames=("name", "steps"))
def _langevin_neurons(u_NP, key, l_PP, t_PM, s_a, h, name: str, steps: int):
  """ULA on u with density N(u|0,I) exp(s_a |t^T phi(L u)|^2 / 2), N neurons at once.
  Returns the final u and the running sums of phi phi^T over the second half of the steps."""
  phi = _phi(name)

  def logp(u):
    return -0.5 * jnp.sum(u ** 2) + 0.5 * s_a * jnp.sum((phi(l_PP @ u) @ t_PM) ** 2)

  grad = jax.vmap(jax.grad(logp))

  def step(carry, i):
    u, acc = carry
    u = u + h * grad(u) + jnp.sqrt(2 * h) * jax.random.normal(jax.random.fold_in(key, i), u.shape)
    f = phi(u @ l_PP.T)
    acc = acc + jnp.where(i >= steps // 2, f.T @ f, 0.0)
    return (u, acc), None

  p = u_NP.shape[1]
  (u, acc), _ = jax.lax.scan(step, (u_NP, jnp.zeros((p, p), u_NP.dtype)), jnp.arange(steps))
  return u, acc / (u_NP.shape[0] * (steps - steps // 2))


def solve(k_PP: np.ndarray, y_PM: np.ndarray, s_a: float, b: float, nonlinearity: str,
          n_neurons: int = 1024, outer: int = 40, inner: int = 200, damping: float = 0.3,
          seed: int = 0, jitter: float = 1e-6) -> dict:
  """The order parameter t by damped fixed-point steps on Monte Carlo estimates of C.

  Returns t, C, U, the mean training prediction Y - t/b, the residual history
  |<phi a^T> + t/b - Y| / |Y|, and a population of theory neurons (phi_PN on the
  training inputs, readouts a_NM drawn from a | z) for the coding statistics.
  """
  _phi(nonlinearity)
  k = np.asarray(k_PP, np.float64)
  y = np.asarray(y_PM, np.float64)
  p, m = y.shape
  if k.shape != (p, p):
    raise ConfigError(f"theory kernel shape {k.shape}: expected ({p}, {p}) for {p} inputs")
  lc = np.linalg.cholesky(k + jitter * np.trace(k) / p * np.eye(p))
  inv_b = 0.0 if math.isinf(b) else 1.0 / b
  key = jax.random.PRNGKey(seed)
  u = jax.random.normal(jax.random.fold_in(key, 2 ** 31), (n_neurons, p), jnp.float32)
  l32 = jnp.asarray(lc, jnp.float32)
  t = np.zeros((p, m))
  d, hist, kept = float(damping), [], []
  lmax = float(np.linalg.eigvalsh(k).max())
  for it in range(outer):
    curv = s_a * lmax * (np.linalg.norm(t, 2) ** 2) * (4 / math.pi if nonlinearity == "erf" else 1)
    h = min(0.05, 0.3 / (1.0 + curv))
    u_new, c = _langevin_neurons(u, jax.random.fold_in(key, it), l32, jnp.asarray(t, jnp.float32),
                                 float(s_a), float(h), nonlinearity, inner)
    c = np.asarray(c, np.float64)
    if not np.all(np.isfinite(c)):
      raise ConfigError(f"theory for {nonlinearity}: single-neuron chains diverged at step {it} "
                        "(tilted density not normalizable); expected a weaker tilt")
    u = u_new
    res = np.linalg.norm(s_a * c @ t + t * inv_b - y) / np.linalg.norm(y)
    if hist and res > hist[-1] * 1.5:
      d = max(d / 2, 0.02)
    hist.append(float(res))
    if it >= outer // 2:
      kept.append((t, c))                 # (t, C measured at t): averaged below
    t = t + d * (np.linalg.solve(s_a * c + inv_b * np.eye(p), y) - t)
  t = np.mean([kc[0] for kc in kept], 0)
  c = np.mean([kc[1] for kc in kept], 0)
  return _summary(t, c, y, s_a, inv_b, hist, u, lc, nonlinearity, key)


def _summary(t, c, y, s_a, inv_b, hist, u, lc, nonlinearity, key) -> dict:
  phi_NP = np.asarray(_phi(nonlinearity)(jnp.asarray(np.asarray(u) @ lc.T)), np.float64)
  xi = np.asarray(jax.random.normal(jax.random.fold_in(key, 10 ** 6), (len(phi_NP), y.shape[1])))
  a_NM = s_a * phi_NP @ t + math.sqrt(s_a) * xi
  return {"t": t, "C": c, "U": s_a * np.eye(y.shape[1]) + s_a ** 2 * t.T @ c @ t,
          "train_mean": s_a * c @ t, "residual": hist, "phi_PN": phi_NP.T, "a_NM": a_NM}


def compare(theory: dict, a_SCNM: np.ndarray, kernel_PP: np.ndarray) -> dict:
  """Theory beside the sampled posterior: readout second moment U (mean diagonal and
  relative Frobenius difference) and the posterior-averaged kernel."""
  a = np.asarray(a_SCNM, np.float64)
  a = a.reshape(-1, a.shape[-2], a.shape[-1])
  u_emp = np.einsum("snm,snk->mk", a, a) / (a.shape[0] * a.shape[1])
  u_th = np.asarray(theory["U"], np.float64)
  c_th = np.asarray(theory["C"], np.float64)
  return {"readout_second_moment_theory": float(np.mean(np.diag(u_th))),
          "readout_second_moment_sampled": float(np.mean(np.diag(u_emp))),
          "readout_cov_rel_difference": float(np.linalg.norm(u_emp - u_th) / np.linalg.norm(u_th)),
          "kernel_rel_difference": float(np.linalg.norm(kernel_PP - c_th) / np.linalg.norm(c_th)),
          "theory_residual_final": float(theory["residual"][-1]) if "residual" in theory else 0.0}
