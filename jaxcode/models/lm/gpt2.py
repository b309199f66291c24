"""GPT-2 as a Flax Linen module, with its Hugging Face key map beside it.

Also home of the pieces the three architectures share (masked attention,
the hookpoint record), so gpt_neox.py and bert.py import them from here.

Hookpoints recorded per block i (names as in jaxcode.models.lm):
  blocks.{i}.resid_pre   residual stream entering the block
  blocks.{i}.attn_out    output of the attention projection (c_proj), before the residual add
  blocks.{i}.mlp_hidden  MLP hidden activations after the nonlinearity
  blocks.{i}.mlp_out     output of the MLP projection (c_proj), before the residual add
  blocks.{i}.resid_post  residual stream leaving the block
plus `embed` (token + position embedding), `final` (after ln_f) and `logits`.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------- shared pieces

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
  from jaxcode.errors import ConfigError
  if name not in ACTIVATIONS:
    raise ConfigError(f"activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


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


def dense(features: int, name: str, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def layer_norm(eps: float, name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


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


def check_inputs(input_ids_BT, mask_BT):
  chex.assert_rank(input_ids_BT, 2)
  chex.assert_equal_shape([input_ids_BT, mask_BT])


# ---------------------------------------------------------------- GPT-2

class GPT2Block(nn.Module):
  n_heads: int
  d_mlp: int
  eps: float
  act: str
  scale: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, bias_B1QK, edits=None):
    B, T, D = x_BTD.shape
    H, K = self.n_heads, D // self.n_heads
    rec = {}
    x_BTD = hook(rec, "resid_pre", x_BTD, edits)
    h = layer_norm(self.eps, "ln_1", self.dtype)(x_BTD)
    q, k, v = (dense(D, n, self.dtype)(h).reshape(B, T, H, K) for n in ("q", "k", "v"))
    attn = dense(D, "c_proj_attn", self.dtype)(attend(q, k, v, bias_B1QK, self.scale))
    attn = hook(rec, "attn_out", attn, edits)
    x_BTD = x_BTD + attn
    h = layer_norm(self.eps, "ln_2", self.dtype)(x_BTD)
    hid = activation(self.act)(dense(self.d_mlp, "c_fc", self.dtype)(h))
    hid = hook(rec, "mlp_hidden", hid, edits)
    mlp = dense(D, "c_proj_mlp", self.dtype)(hid)
    mlp = hook(rec, "mlp_out", mlp, edits)
    x_BTD = x_BTD + mlp
    x_BTD = hook(rec, "resid_post", x_BTD, edits)
    return x_BTD, rec


class GPT2(nn.Module):
  """GPT-2 LM; __call__ runs the first `n_blocks` blocks and returns every hookpoint."""
  vocab: int
  d_model: int
  n_layers: int
  n_heads: int
  d_mlp: int
  n_ctx: int
  eps: float
  act: str
  scale_attn_weights: bool = True
  scale_by_inverse_layer_idx: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids_BT, mask_BT, n_blocks: int, head: bool = True,
               edits=None):
    check_inputs(input_ids_BT, mask_BT)
    T = input_ids_BT.shape[1]
    wte = nn.Embed(self.vocab, self.d_model, dtype=self.dtype, param_dtype=jnp.float32, name="wte")
    wpe = nn.Embed(self.n_ctx, self.d_model, dtype=self.dtype, param_dtype=jnp.float32, name="wpe")
    x_BTD = wte(input_ids_BT) + wpe(jnp.arange(T))[None]
    rec = {}
    x_BTD = hook(rec, "embed", x_BTD, edits)
    bias = attention_bias(mask_BT, causal=True)
    K = self.d_model // self.n_heads
    for i in range(n_blocks):
      scale = K ** -0.5 if self.scale_attn_weights else 1.0
      if self.scale_by_inverse_layer_idx:
        scale /= float(i + 1)
      x_BTD, acts = GPT2Block(self.n_heads, self.d_mlp, self.eps, self.act, scale, self.dtype,
                              name=f"h_{i}")(x_BTD, bias, block_edits(edits, i))
      rec.update({f"blocks.{i}.{k}": v for k, v in acts.items()})
    if head:
      final = layer_norm(self.eps, "ln_f", self.dtype)(x_BTD)
      final = hook(rec, "final", final, edits)
      rec["logits"] = wte.attend(final).astype(jnp.float32)
    return rec


def from_hf_config(cfg, dtype=jnp.float32) -> GPT2:
  d = cfg.n_embd
  return GPT2(vocab=cfg.vocab_size, d_model=d, n_layers=cfg.n_layer, n_heads=cfg.n_head,
              d_mlp=cfg.n_inner or 4 * d, n_ctx=cfg.n_positions, eps=cfg.layer_norm_epsilon,
              act=cfg.activation_function, scale_attn_weights=cfg.scale_attn_weights,
              scale_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx, dtype=dtype)


# ---------------------------------------------------------------- HF key map
#
# HF GPT-2 stores its linear layers as Conv1D, already [in, out], so kernels need no
# transpose. c_attn fuses q, k, v along the output axis: columns [0:D], [D:2D], [2D:3D].
# The LM head is tied to wte. Keys carry a `transformer.` prefix in GPT2LMHeadModel
# checkpoints and none in GPT2Model ones; hf.py resolves both.

HF_PREFIX = "transformer."


def _cols(j):
  return lambda w: np.split(w, 3, axis=-1)[j]


def hf_key_map(cfg) -> dict[tuple[str, ...], tuple[str, Callable | None]]:
  """Flax param path -> (HF key, transform of the numpy array or None)."""
  m = {("wte", "embedding"): ("transformer.wte.weight", None),
       ("wpe", "embedding"): ("transformer.wpe.weight", None),
       ("ln_f", "scale"): ("transformer.ln_f.weight", None),
       ("ln_f", "bias"): ("transformer.ln_f.bias", None)}
  for i in range(cfg.n_layer):
    h, p = f"h_{i}", f"transformer.h.{i}."
    for ln in ("ln_1", "ln_2"):
      m[(h, ln, "scale")] = (p + ln + ".weight", None)
      m[(h, ln, "bias")] = (p + ln + ".bias", None)
    for j, n in enumerate("qkv"):
      m[(h, n, "kernel")] = (p + "attn.c_attn.weight", _cols(j))
      m[(h, n, "bias")] = (p + "attn.c_attn.bias", _cols(j))
    for ours, theirs in (("c_proj_attn", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                         ("c_proj_mlp", "mlp.c_proj")):
      m[(h, ours, "kernel")] = (p + theirs + ".weight", None)
      m[(h, ours, "bias")] = (p + theirs + ".bias", None)
  return m


HEAD_PATHS: tuple[tuple[str, ...], ...] = ()  # tied head: no extra weights
