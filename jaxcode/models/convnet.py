"""A small ResNet for grayscale images (layer 1), sized by width and number of blocks.

  x (B, side, side) -> stem: 3x3 conv 1 -> C (stride stem_stride: 2 halves 28x28 inputs
       to 14x14 before the blocks, as ImageNet ResNets' strided stem does, for CPU cost)
    -> n_blocks pre-activation residual blocks h + conv2(relu(conv1(relu(h)))), 3x3 convs
       C -> C; a 2x2 average pool after every block but the last while the side is > 4
       (identity shortcuts throughout: every block keeps C channels, and the pool has no
       parameters, so the skip connections are the identity on channels)
    -> relu, global average pool -> dense head C -> n_classes logits.

No normalisation layers (no batch statistics in the train state); convs and the head
use Flax's default LeCun-normal kernels and zero biases, the last conv of each block is
scaled by 1/sqrt(n_blocks) at init so the residual stream's variance stays O(1).

Parameters (hand formula, `n_params`): stem 9C + C, each block 2(9C^2 + C), head
C*n_classes + n_classes. `width_for_params` picks the C whose count is closest to a target.
Parameter names: stem, block{b}_conv1, block{b}_conv2, head (each {'kernel', 'bias'}; conv
kernels HWIO).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.errors import ConfigError, positive_int

KERNEL = 3


class ResNet(nn.Module):
  width: int = 16
  n_blocks: int = 2
  n_classes: int = 10
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x_BHW: jax.Array) -> jax.Array:
    s = (self.stem_stride, self.stem_stride)
    h = nn.Conv(self.width, (KERNEL, KERNEL), strides=s, name="stem")(x_BHW[..., None])
    scale = 1.0 / np.sqrt(self.n_blocks)
    last_init = lambda k, s, d=jnp.float32: nn.initializers.lecun_normal()(k, s, d) * scale
    for b in range(self.n_blocks):
      r = nn.Conv(self.width, (KERNEL, KERNEL), name=f"block{b}_conv1")(nn.relu(h))
      r = nn.Conv(self.width, (KERNEL, KERNEL), kernel_init=last_init,
                  name=f"block{b}_conv2")(nn.relu(r))
      h = h + r
      if b < self.n_blocks - 1 and h.shape[1] > 4:
        h = nn.avg_pool(h, (2, 2), (2, 2))
    h = nn.relu(h).mean(axis=(1, 2))
    return nn.Dense(self.n_classes, name="head")(h)


def n_params(width: int, n_blocks: int, n_classes: int = 10, in_channels: int = 1) -> int:
  c = int(width)
  stem = KERNEL * KERNEL * in_channels * c + c
  block = 2 * (KERNEL * KERNEL * c * c + c)
  return stem + int(n_blocks) * block + c * n_classes + n_classes


def width_for_params(target: int, n_blocks: int, n_classes: int = 10,
                     max_width: int = 4096) -> int:
  """The width whose n_params is closest to target (ties: the smaller width)."""
  positive_int("params", int(target))
  widths = np.arange(1, max_width + 1)
  counts = np.array([n_params(w, n_blocks, n_classes) for w in widths])
  return int(widths[np.argmin(np.abs(counts - int(target)))])


def make(width: int, n_blocks: int, n_classes: int = 10, stem_stride: int = 1) -> ResNet:
  positive_int("cnn.width", width)
  positive_int("cnn.n_blocks", n_blocks)
  positive_int("cnn.stem_stride", stem_stride)
  if int(n_classes) < 2:
    raise ConfigError(f"n_classes={n_classes}: expected >= 2")
  return ResNet(int(width), int(n_blocks), int(n_classes), int(stem_stride))


def conv_layers(params) -> list[tuple[str, np.ndarray]]:
  """(name, kernel HWIO) of the chain stem, block0_conv1, block0_conv2, ..., head (a dense
  head kernel [C, K] is returned as [1, 1, C, K]), as float64 NumPy."""
  p = params["params"] if set(params) == {"params"} else params
  n_blocks = sum(1 for k in p if k.startswith("block") and k.endswith("_conv1"))
  names = ["stem"] + [f"block{b}_conv{i}" for b in range(n_blocks) for i in (1, 2)] + ["head"]
  missing = [n for n in names if n not in p]
  if missing:
    raise ConfigError(f"params: not a convnet.ResNet tree, missing {', '.join(missing)}")
  out = []
  for n in names:
    k = np.asarray(p[n]["kernel"], np.float64)
    out.append((n, k.reshape(1, 1, *k.shape) if k.ndim == 2 else k))
  return out
