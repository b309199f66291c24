"""The pieces every transformer family here shares: masked attention, rotary embeddings,
the MLP, norms and dense layers, and the hookpoint record.

The block helpers (`self_attention`, `mlp`) create their Flax submodules by name inside the
calling block's compact `__call__`, so the parameter tree is the block's own: a model file
holds only its block wiring and its HF key map.

Hookpoints recorded per block (names as in jaxcode.models.lm):
  resid_pre   residual stream entering the block
  attn_out    output of the attention projection, before any residual add
  mlp_hidden  MLP hidden activations after the nonlinearity
  mlp_out     output of the MLP projection, before any residual add
  resid_post  residual stream leaving the block
Shapes: B batch, T positions (Q queries, K keys), D model width, H heads, K head dim.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.errors import ConfigError

NEG_INF = float(np.finfo(np.float32).min)

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ConfigError(f"activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


# ---------------------------------------------------------------- layers

def dense(features: int, name: str, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def layer_norm(eps: float, name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def embed(n: int, d_model: int, name: str, dtype) -> nn.Embed:
  return nn.Embed(n, d_model, dtype=dtype, param_dtype=jnp.float32, name=name)


# ---------------------------------------------------------------- attention

def attention_bias(mask_BT: jax.Array, causal: bool) -> jax.Array:
  """Additive bias [B, 1, Q, K]: 0 where query q may see key k, float32 min elsewhere.

  A finite minimum (as HF uses) keeps an all-padding row finite instead of NaN.
  """
  T = mask_BT.shape[1]
  allowed_BQK = jnp.broadcast_to(mask_BT[:, None, :].astype(bool), (mask_BT.shape[0], T, T))
  if causal:
    allowed_BQK = allowed_BQK & jnp.tril(jnp.ones((T, T), bool))[None]
  return jnp.where(allowed_BQK, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def attend(q_BTHK, k_BTHK, v_BTHK, bias_B1QK, scale: float):
  """softmax(q k^T * scale + bias) v, logits and softmax in float32; returns [B, T, H*K]."""
  B, T, H, K = q_BTHK.shape
  logits = jnp.einsum("bqhk,bshk->bhqs", q_BTHK, k_BTHK,
                      preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(logits + bias_B1QK, axis=-1).astype(v_BTHK.dtype)
  out = jnp.einsum("bhqs,bshk->bqhk", probs, v_BTHK)
  return out.reshape(B, T, H * K)


def rotary(x_BTHK, n_rot: int, theta: float):
  """NeoX rotate-half rotary embedding on the first n_rot dims of each head (positions 0..T-1)."""
  if n_rot == 0:
    return x_BTHK
  T = x_BTHK.shape[1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, n_rot, 2, dtype=jnp.float32) / n_rot))
  freqs_TF = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq[None]
  emb_TR = jnp.concatenate([freqs_TF, freqs_TF], axis=-1)
  cos, sin = jnp.cos(emb_TR)[None, :, None], jnp.sin(emb_TR)[None, :, None]
  x_rot, x_pass = x_BTHK[..., :n_rot], x_BTHK[..., n_rot:]
  half = n_rot // 2
  rot_half = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  x_rot = (x_rot * cos.astype(x_BTHK.dtype) + rot_half * sin.astype(x_BTHK.dtype))
  return jnp.concatenate([x_rot, x_pass], axis=-1)


def self_attention(rec: dict, h_BTD, bias_B1QK, n_heads: int, scale: float,
                   names: Sequence[str], dtype, edits, use_bias: bool = True,
                   rope: tuple[int, float] | None = None):
  """Multi-head self-attention of the block's normed input h; records and returns `attn_out`.

  names: the (q, k, v, output) projections' parameter names; rope: (n_rot, theta) to rotate
  q and k (NeoX layout), None for none.
  """
  B, T, D = h_BTD.shape
  H, K = n_heads, D // n_heads
  q, k, v = (dense(D, n, dtype, use_bias)(h_BTD).reshape(B, T, H, K) for n in names[:3])
  if rope is not None:
    q, k = rotary(q, *rope), rotary(k, *rope)
  attn_BTD = dense(D, names[3], dtype, use_bias)(attend(q, k, v, bias_B1QK, scale))
  return hook(rec, "attn_out", attn_BTD, edits)


# ---------------------------------------------------------------- MLP

def mlp(rec: dict, h_BTD, d_mlp: int, act: str, names: Sequence[str], dtype, edits):
  """dense -> act (recorded as `mlp_hidden`) -> dense (recorded as `mlp_out`); names: the two
  projections' parameter names."""
  hid_BTF = activation(act)(dense(d_mlp, names[0], dtype)(h_BTD))
  hid_BTF = hook(rec, "mlp_hidden", hid_BTF, edits)
  out_BTD = dense(h_BTD.shape[-1], names[1], dtype)(hid_BTF)
  return hook(rec, "mlp_out", out_BTD, edits)


# ---------------------------------------------------------------- hookpoints

def hook(rec: dict, name: str, x, edits):
  """Records x as hookpoint `name` in rec; if edits names it, x is first replaced by edits[name](x).

  An edit is a function array -> array of the same shape (an SAE's reconstruction, a zero
  ablation); the replaced value is what the rest of the forward sees and what is recorded.
  """
  if edits and name in edits:
    y = edits[name](x)
    chex.assert_shape(y, x.shape)
    x = y.astype(x.dtype)
  rec[name] = x
  return x


def block_edits(edits, i: int):
  """The edits of block i, keyed by the block-local name (resid_pre, attn_out, ...)."""
  prefix = f"blocks.{i}."
  return {k[len(prefix):]: f for k, f in (edits or {}).items() if k.startswith(prefix)}


def record_block(rec: dict, i: int, acts: dict) -> None:
  """Adds block i's hookpoints to the model's record under their global names."""
  rec.update({f"blocks.{i}.{k}": v for k, v in acts.items()})


def check_inputs(input_ids_BT, mask_BT):
  chex.assert_rank(input_ids_BT, 2)
  chex.assert_equal_shape([input_ids_BT, mask_BT])
