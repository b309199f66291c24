"""A small denoising MLP trained with the DDPM noise-prediction loss (layer 1).

Model: eps_hat(x_t, t) = Dense_L(silu(... silu(Dense_0([x_t | emb(t)])) ...)), x_t the
flattened noisy image (side^2 values), emb(t) n_time sinusoidal features of t / n_steps
(sin and cos at frequencies 2^0 .. 2^(n_time/2 - 1) times pi; no parameters). depth
hidden layers of `hidden` units, output side^2. Parameter names Dense_0 .. Dense_depth.

Parameters (hand formula, `n_params`): (D + E) H + H + (depth - 1)(H^2 + H) + H D + D,
D = side^2, E = n_time, H = hidden.

DDPM (Ho, Jain & Abbeel 2020): beta_t linear from beta_1 to beta_T over n_steps, alpha_bar_t =
prod (1 - beta_s); x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, x_0 the image
scaled to [-1, 1], t uniform in 1..n_steps; loss = mean (eps_hat - eps)^2 (the 'simple' loss).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.errors import ConfigError, positive_int


class DenoiserMLP(nn.Module):
  hidden: int = 128
  depth: int = 2
  n_time: int = 16
  n_out: int = 784

  @nn.compact
  def __call__(self, x_BD: jax.Array, t_B: jax.Array, n_steps: int) -> jax.Array:
    h = jnp.concatenate([x_BD, time_features(t_B, n_steps, self.n_time)], axis=-1)
    for i in range(self.depth):
      h = nn.silu(nn.Dense(self.hidden, name=f"Dense_{i}")(h))
    return nn.Dense(self.n_out, name=f"Dense_{self.depth}")(h)


def time_features(t_B: jax.Array, n_steps: int, n_time: int) -> jax.Array:
  """n_time sinusoidal features of t / n_steps: [sin(pi 2^k s), cos(pi 2^k s)]."""
  s = t_B.astype(jnp.float32)[:, None] / float(n_steps)
  freqs = jnp.pi * 2.0 ** jnp.arange(n_time // 2, dtype=jnp.float32)
  return jnp.concatenate([jnp.sin(s * freqs), jnp.cos(s * freqs)], axis=-1)


def n_params(hidden: int, depth: int, side: int, n_time: int = 16) -> int:
  d, e, h = int(side) ** 2, int(n_time), int(hidden)
  return (d + e) * h + h + (int(depth) - 1) * (h * h + h) + h * d + d


def hidden_for_params(target: int, depth: int, side: int, n_time: int = 16,
                      max_hidden: int = 8192) -> int:
  """The hidden width whose n_params is closest to target (ties: the smaller)."""
  positive_int("params", int(target))
  hs = np.arange(1, max_hidden + 1)
  counts = np.array([n_params(h, depth, side, n_time) for h in hs])
  return int(hs[np.argmin(np.abs(counts - int(target)))])


def make(hidden: int, depth: int, side: int, n_time: int = 16) -> DenoiserMLP:
  positive_int("denoiser.hidden", hidden)
  positive_int("denoiser.depth", depth)
  positive_int("image side", side)
  if int(n_time) < 2 or int(n_time) % 2:
    raise ConfigError(f"denoiser.n_time={n_time}: expected an even number >= 2")
  return DenoiserMLP(int(hidden), int(depth), int(n_time), int(side) ** 2)


def schedule(n_steps: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> jax.Array:
  """alpha_bar_t for t = 1..n_steps (index t - 1)."""
  positive_int("denoiser.diffusion_steps", n_steps)
  if not 0 < beta_1 <= beta_T < 1:
    raise ConfigError(f"betas ({beta_1}, {beta_T}): expected 0 < beta_1 <= beta_T < 1")
  betas = jnp.linspace(beta_1, beta_T, int(n_steps), dtype=jnp.float32)
  return jnp.cumprod(1.0 - betas)


def ddpm_loss(module: DenoiserMLP, params, x0_BD: jax.Array, key: jax.Array,
              alpha_bar_T: jax.Array) -> jax.Array:
  """The simple DDPM loss on images x0 in [0, 1] (scaled to [-1, 1] here)."""
  n_steps = alpha_bar_T.shape[0]
  k_t, k_eps = jax.random.split(key)
  t_B = jax.random.randint(k_t, (x0_BD.shape[0],), 1, n_steps + 1)
  eps = jax.random.normal(k_eps, x0_BD.shape, jnp.float32)
  ab = alpha_bar_T[t_B - 1][:, None]
  x_t = jnp.sqrt(ab) * (2.0 * x0_BD - 1.0) + jnp.sqrt(1.0 - ab) * eps
  pred = module.apply({"params": params}, x_t, t_B, n_steps)
  return jnp.mean((pred - eps) ** 2)
