"""Langevin sampling of Bayesian posteriors as an optax transformation (layer 2).

Target density exp(-beta * L(theta) + log P0(theta)) with a Gaussian prior
P0 = N(0, diag(v)). Unadjusted (Euler-Maruyama) Langevin with a constant
diagonal mass matrix M^{-1} = diag(v) when `precondition` is set:

    theta <- theta - eta * m * grad U(theta) + sqrt(2 * eta * m) * xi,
    U = beta * L - log P0,   grad U = beta * grad L + theta / v,
    m = v (precondition=True, every coordinate relaxes under the prior on the
    same time scale) or m = 1.

`langevin(...)` consumes the gradient of L (what the shared loop differentiates:
the task's loss) and the params, and returns the update, so it is a drop-in
`Task.tx`. Its state carries the count of updates and the seed's key; the noise
of update t is drawn from fold_in(key(seed), t), so a resumed run continues bit
for bit. With several chains stacked on a leading axis the task's loss is the
*sum* of the per-chain losses, whose gradient is each chain's own gradient.

Diagnostics: divergence detection in the state (the first update at which any
parameter became non-finite or exceeded `bad_sigma` prior standard deviations),
`top_hessian_eig` (a pre-run check of eta against the 2/lambda_max stability
bound of the Euler step), `SampleBuffer` (burn-in, thinning, K stored samples in
the train state's aux), and `rhat` (between-chain agreement of observables).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from jaxcode.errors import ConfigError


class LangevinState(NamedTuple):
  count: jax.Array       # int32: updates done
  key: jax.Array         # uint32[2]: raw key data of PRNGKey(seed)
  first_bad: jax.Array   # int32: first update index that diverged, -1 if none


def validate(step_size: float, beta: float) -> None:
  if not (np.isfinite(step_size) and step_size > 0):
    raise ConfigError(f"langevin step_size={step_size}: expected a finite value > 0")
  if not (np.isfinite(beta) and beta > 0):
    raise ConfigError(f"langevin beta={beta}: expected an inverse temperature > 0")


def langevin(step_size: float, beta: float, prior_var: Any, seed: int,
             precondition: bool = True, bad_sigma: float = 1e4) -> optax.GradientTransformation:
  """Langevin step on exp(-beta L + log N(0, prior_var)); prior_var: pytree of scalars like params.

  `prior_var` may also be one float for every leaf.
  """
  validate(step_size, beta)
  eta = float(step_size)

  def init(params):
    del params
    key = jax.random.key_data(jax.random.PRNGKey(seed))
    return LangevinState(jnp.zeros((), jnp.int32), key, -jnp.ones((), jnp.int32))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("langevin needs params in tx.update (the prior gradient)")
    var = jax.tree.map(lambda _: prior_var, params) if np.isscalar(prior_var) else prior_var
    leaves, treedef = jax.tree.flatten(params)
    g_leaves = treedef.flatten_up_to(grads)
    v_leaves = treedef.flatten_up_to(var)
    key_t = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
    upd, bad = [], jnp.zeros((), bool)
    for i, (p, g, v) in enumerate(zip(leaves, g_leaves, v_leaves)):
      m = v if precondition else 1.0
      drift = beta * g + p / v
      xi = jax.random.normal(jax.random.fold_in(key_t, i), p.shape, p.dtype)
      u = -eta * m * drift + jnp.sqrt(2.0 * eta * m) * xi
      u = u.astype(p.dtype)
      new = p + u
      bad = bad | ~jnp.all(jnp.isfinite(new)) | jnp.any(jnp.abs(new) > bad_sigma * jnp.sqrt(v))
      upd.append(u)
    first_bad = jnp.where((state.first_bad < 0) & bad, state.count, state.first_bad)
    return treedef.unflatten(upd), LangevinState(state.count + 1, state.key, first_bad)

  return optax.GradientTransformation(init, update)


def find_langevin_state(opt_state) -> LangevinState | None:
  """The LangevinState inside an optimizer state (possibly nested in a chain)."""
  if isinstance(opt_state, LangevinState):
    return opt_state
  if isinstance(opt_state, (tuple, list)):
    for s in opt_state:
      found = find_langevin_state(s)
      if found is not None:
        return found
  return None


def divergence_error(step_size: float, first_bad: int) -> ConfigError:
  return ConfigError(f"langevin step_size={step_size}: chains diverged at step {first_bad} "
                     "(a parameter became non-finite or left the prior's range); "
                     "expected a smaller step size")


def top_hessian_eig(potential: Callable[[Any], jax.Array], params, scale: Any = None,
                    iters: int = 30, seed: int = 0) -> jax.Array:
  """Largest |eigenvalue| of S^{1/2} H S^{1/2}, H = Hessian of `potential`, by power iteration.

  With S = the preconditioner (the prior variances) this is the curvature the
  Langevin step sees; the Euler step is stable in the quadratic approximation
  only when step_size * lambda_max < 2.
  """
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  if scale is None:
    s = jnp.ones_like(flat)
  else:
    full = jax.tree.map(lambda p, v: jnp.broadcast_to(jnp.asarray(v, p.dtype), p.shape),
                        params, scale)
    s = jax.flatten_util.ravel_pytree(full)[0]
  root = jnp.sqrt(s)
  grad = jax.grad(lambda f: potential(unravel(f)))

  def hvp(v):
    return root * jax.jvp(grad, (flat,), (root * v,))[1]

  def body(_, carry):
    v, _ = carry
    w = hvp(v)
    lam = jnp.linalg.norm(w)
    return w / jnp.maximum(lam, 1e-30), lam

  v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
  v0 = v0 / jnp.linalg.norm(v0)
  _, lam = jax.lax.fori_loop(0, iters, body, (v0, jnp.zeros((), flat.dtype)))
  return lam


# ------------------------------------------------------------ stored samples

class SampleBuffer(NamedTuple):
  samples: Any        # pytree like params with a leading sample axis K
  n_seen: jax.Array   # int32: samples recorded so far (may exceed K; ring buffer)


def validate_schedule(steps: int, burn_in: int, thin: int, n_samples: int) -> None:
  if burn_in < 0:
    raise ConfigError(f"sampling.burn_in={burn_in}: expected >= 0")
  if thin < 1:
    raise ConfigError(f"sampling.thin={thin}: expected >= 1")
  if n_samples < 1:
    raise ConfigError(f"sampling.n_samples={n_samples}: expected >= 1")
  need = burn_in + thin * (n_samples - 1) + 1
  if steps < need:
    raise ConfigError(f"steps={steps}: burn_in={burn_in} + thin={thin} x {n_samples} samples "
                      f"needs steps >= {need}")


def init_buffer(params, n_samples: int) -> SampleBuffer:
  zeros = jax.tree.map(lambda p: jnp.zeros((n_samples,) + p.shape, p.dtype), params)
  return SampleBuffer(zeros, jnp.zeros((), jnp.int32))


def record(buf: SampleBuffer, params, step: jax.Array, burn_in: int, thin: int) -> SampleBuffer:
  """Stores params when step >= burn_in and (step - burn_in) % thin == 0 (slot n_seen mod K)."""
  k = jax.tree.leaves(buf.samples)[0].shape[0]
  rel = step - burn_in
  take = (rel >= 0) & (rel % thin == 0)
  slot = buf.n_seen % k

  def one(store, p):
    cur = jax.lax.dynamic_index_in_dim(store, slot, 0, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(store, jnp.where(take, p, cur), slot, 0)

  return SampleBuffer(jax.tree.map(one, buf.samples, params),
                      buf.n_seen + take.astype(jnp.int32))


def stored(buf: SampleBuffer):
  """The filled samples (host numpy), oldest first."""
  n = int(jax.device_get(buf.n_seen))
  k = jax.tree.leaves(buf.samples)[0].shape[0]
  order = np.arange(n - min(n, k), n) % k
  return jax.tree.map(lambda s: np.asarray(jax.device_get(s))[order], buf.samples)


# ------------------------------------------------------------ agreement

def rhat(obs_SC: np.ndarray) -> np.ndarray:
  """Gelman-Rubin potential scale reduction of observables: samples S x chains C x ...

  R = sqrt(((S-1)/S W + B/S) / W), W = mean within-chain variance, B = S x
  variance of the chain means. R near 1: chains agree; R >> 1: they sample
  different regions (or have not mixed).
  """
  x = np.asarray(obs_SC, np.float64)
  s = x.shape[0]
  if s < 2 or x.shape[1] < 2:
    raise ConfigError(f"rhat: got {s} samples x {x.shape[1]} chains; expected >= 2 of each")
  w = x.var(axis=0, ddof=1).mean(axis=0)
  b = s * x.mean(axis=0).var(axis=0, ddof=1)
  var_plus = (s - 1) / s * w + b / s
  return np.sqrt(var_plus / np.maximum(w, 1e-300))
