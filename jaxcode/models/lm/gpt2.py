"""GPT-2 as a Flax Linen module, with its Hugging Face key map beside it.

Per block, as HF transformers' GPT2Block computes it (pre-LayerNorm):
  a = x + Attn(LN_1(x));  y = a + MLP(LN_2(a))
Hookpoints per block as in layers.py: `attn_out` is the attention c_proj output and `mlp_out`
the MLP c_proj output (both before the residual add), `resid_mid` = a, `mlp_in` = LN_2(a);
plus `embed` (token + position embedding), `final` (after ln_f) and `logits`. The shared
pieces live in layers.py.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcode.models.lm.layers import (attention_bias, block_edits, check_inputs, embed, hook,
                                      layer_norm, mlp, record_block, self_attention)


class GPT2Block(nn.Module):
  n_heads: int
  d_mlp: int
  eps: float
  act: str
  scale: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, bias_B1QK, edits=None):
    rec = {}
    x_BTD = hook(rec, "resid_pre", x_BTD, edits)
    h_BTD = layer_norm(self.eps, "ln_1", self.dtype)(x_BTD)
    x_BTD = x_BTD + self_attention(rec, h_BTD, bias_B1QK, self.n_heads, self.scale,
                                   ("q", "k", "v", "c_proj_attn"), self.dtype, edits)
    x_BTD = hook(rec, "resid_mid", x_BTD, edits)
    h_BTD = hook(rec, "mlp_in", layer_norm(self.eps, "ln_2", self.dtype)(x_BTD), edits)
    x_BTD = x_BTD + mlp(rec, h_BTD, self.d_mlp, self.act, ("c_fc", "c_proj_mlp"), self.dtype,
                        edits)
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
    wte = embed(self.vocab, self.d_model, "wte", self.dtype)
    wpe = embed(self.n_ctx, self.d_model, "wpe", self.dtype)
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
      record_block(rec, i, acts)
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
