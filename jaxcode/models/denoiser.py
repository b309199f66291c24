"""Small denoisers trained with the DDPM noise-prediction loss (layer 1): an MLP and a
convolutional residual network.

ConvDenoiser (arch 'conv'): the image and n_time constant maps of the time features as
input channels -> stem 3x3 conv (1 + E -> C) -> depth pre-activation residual blocks of
two 3x3 convs C -> C at full resolution (identity shortcuts) -> relu -> 'head' 3x3 conv
C -> 1, the predicted noise. Names stem, block{b}_conv1/2, head as jaxcode.models.convnet
(so its NIN builder reads both). Parameters (`conv_params`): 9(1 + E)C + C + depth
2(9C^2 + C) + 9C + 1. At a few ten thousand parameters this is the model that can learn:
an MLP of that size has a hidden layer far narrower than the 784 pixels it must predict.

MLP (arch 'mlp'): eps_hat(x_t, t) = Dense_L(silu(... silu(Dense_0([x_t | emb(t)])) ...)), x_t the
flattened noisy image (side^2 values), emb(t) n_time sinusoidal features of t / n_steps
(sin and cos at frequencies 2^0 .. 2^(n_time/2 - 1) times pi; no parameters). depth
hidden layers of `hidden` units, output side^2. Parameter names Dense_0 .. Dense_depth.

MLP parameters (hand formula, `n_params`): (D + E) H + H + (depth - 1)(H^2 + H) + H D + D,
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


class ConvDenoiser(nn.Module):
  width: int = 16
  depth: int = 2
  n_time: int = 4
  side: int = 28

  @nn.compact
  def __call__(self, x_BD: jax.Array, t_B: jax.Array, n_steps: int) -> jax.Array:
    B, s = x_BD.shape[0], self.side
    temb = jnp.broadcast_to(time_features(t_B, n_steps, self.n_time)[:, None, None, :],
                            (B, s, s, self.n_time))
    h = jnp.concatenate([x_BD.reshape(B, s, s, 1), temb], axis=-1)
    h = nn.Conv(self.width, (3, 3), name="stem")(h)
    scale = 1.0 / np.sqrt(self.depth)
    last_init = lambda k, sh, d=jnp.float32: nn.initializers.lecun_normal()(k, sh, d) * scale
    for b in range(self.depth):
      r = nn.Conv(self.width, (3, 3), name=f"block{b}_conv1")(nn.relu(h))
      h = h + nn.Conv(self.width, (3, 3), kernel_init=last_init,
                      name=f"block{b}_conv2")(nn.relu(r))
    return nn.Conv(1, (3, 3), name="head")(nn.relu(h)).reshape(B, s * s)


def conv_params(width: int, depth: int, n_time: int = 4) -> int:
  c, e = int(width), int(n_time)
  return 9 * (1 + e) * c + c + int(depth) * 2 * (9 * c * c + c) + 9 * c + 1


def time_features(t_B: jax.Array, n_steps: int, n_time: int) -> jax.Array:
  """n_time sinusoidal features of t / n_steps: [sin(pi 2^k s), cos(pi 2^k s)]."""
  s = t_B.astype(jnp.float32)[:, None] / float(n_steps)
  freqs = jnp.pi * 2.0 ** jnp.arange(n_time // 2, dtype=jnp.float32)
  return jnp.concatenate([jnp.sin(s * freqs), jnp.cos(s * freqs)], axis=-1)


ARCHS = ("mlp", "conv")


def n_params(hidden: int, depth: int, side: int, n_time: int = 16, arch: str = "mlp") -> int:
  """Parameters of the MLP (hidden units) or of the conv denoiser (hidden = channels)."""
  if arch == "conv":
    return conv_params(hidden, depth, n_time)
  d, e, h = int(side) ** 2, int(n_time), int(hidden)
  return (d + e) * h + h + (int(depth) - 1) * (h * h + h) + h * d + d


def hidden_for_params(target: int, depth: int, side: int, n_time: int = 16,
                      max_hidden: int = 8192, arch: str = "mlp") -> int:
  """The width whose n_params is closest to target (ties: the smaller)."""
  positive_int("params", int(target))
  hs = np.arange(1, max_hidden + 1)
  counts = np.array([n_params(h, depth, side, n_time, arch) for h in hs])
  return int(hs[np.argmin(np.abs(counts - int(target)))])


def make(hidden: int, depth: int, side: int, n_time: int = 16, arch: str = "mlp"):
  positive_int("denoiser.hidden", hidden)
  positive_int("denoiser.depth", depth)
  positive_int("image side", side)
  if int(n_time) < 2 or int(n_time) % 2:
    raise ConfigError(f"denoiser.n_time={n_time}: expected an even number >= 2")
  if arch == "conv":
    return ConvDenoiser(int(hidden), int(depth), int(n_time), int(side))
  if arch != "mlp":
    raise ConfigError(f"denoiser.arch={arch!r}: expected one of {ARCHS}")
  return DenoiserMLP(int(hidden), int(depth), int(n_time), int(side) ** 2)


def schedule(n_steps: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> jax.Array:
  """alpha_bar_t for t = 1..n_steps (index t - 1)."""
  positive_int("denoiser.diffusion_steps", n_steps)
  if not 0 < beta_1 <= beta_T < 1:
    raise ConfigError(f"betas ({beta_1}, {beta_T}): expected 0 < beta_1 <= beta_T < 1")
  betas = jnp.linspace(beta_1, beta_T, int(n_steps), dtype=jnp.float32)
  return jnp.cumprod(1.0 - betas)


def ddpm_loss(module, params, x0_BD: jax.Array, key: jax.Array,
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
