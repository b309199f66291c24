"""GPT-NeoX (the Pythia suite) as a Flax Linen module, with its HF key map beside it.

Architecture, as HF transformers' GPTNeoXLayer computes it:
  parallel residual (default):  y = x + Attn(LN1(x)) + MLP(LN2(x))
  sequential (use_parallel_residual=False):  a = x + Attn(LN1(x)); y = a + MLP(LN2(a))
Rotary embeddings on the first `int(head_dim * partial_rotary_factor)` dims of each
head, in the NeoX "rotate half" layout (first half / second half, not interleaved).
transformers 5 keeps rope settings in `config.rope_parameters`
({'rope_theta', 'partial_rotary_factor', 'rope_type'}); older configs' `rotary_pct`
and `rotary_emb_base` are read when present.

Hookpoints as in layers.py; `attn_out` is the attention `dense` output, `mlp_out` the
`dense_4h_to_h` output (both before any residual add), `resid_mid` = x + attn_out (in the
parallel layout it lies on no path HF computes; the block output is resid_mid + mlp_out, so
an edit there reaches the output but not the MLP input), `mlp_in` = the
post_attention_layernorm output, `final` after final_layer_norm.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcode.errors import ConfigError
from jaxcode.models.lm.layers import (attention_bias, block_edits, check_inputs, dense, embed,
                                      hook, layer_norm, mlp, record_block, self_attention)


def rope_settings(cfg) -> tuple[float, float]:
  """(theta, partial_rotary_factor) from a v5 config (rope_parameters) or a v4 one."""
  rp = getattr(cfg, "rope_parameters", None) or {}
  rope_type = rp.get("rope_type", "default")
  if rope_type != "default":
    raise ConfigError(f"gpt_neox rope_type={rope_type!r}: only 'default' rotary is supported")
  theta = rp.get("rope_theta", getattr(cfg, "rotary_emb_base", 10000.0))
  frac = rp.get("partial_rotary_factor", getattr(cfg, "rotary_pct", 1.0))
  return float(theta), float(frac)


class NeoXBlock(nn.Module):
  n_heads: int
  d_mlp: int
  eps: float
  act: str
  n_rot: int
  theta: float
  parallel: bool
  attn_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, bias_B1QK, edits=None):
    rec = {}
    x_BTD = hook(rec, "resid_pre", x_BTD, edits)
    K = x_BTD.shape[-1] // self.n_heads
    h_BTD = layer_norm(self.eps, "input_layernorm", self.dtype)(x_BTD)
    attn_BTD = self_attention(rec, h_BTD, bias_B1QK, self.n_heads, K ** -0.5,
                              ("q", "k", "v", "attn_dense"), self.dtype, edits, self.attn_bias,
                              rope=(self.n_rot, self.theta))
    mid_BTD = hook(rec, "resid_mid", x_BTD + attn_BTD, edits)
    h_BTD = layer_norm(self.eps, "post_attention_layernorm", self.dtype)(
        x_BTD if self.parallel else mid_BTD)
    h_BTD = hook(rec, "mlp_in", h_BTD, edits)
    mlp_BTD = mlp(rec, h_BTD, self.d_mlp, self.act, ("dense_h_to_4h", "dense_4h_to_h"),
                  self.dtype, edits)
    x_BTD = mid_BTD + mlp_BTD
    x_BTD = hook(rec, "resid_post", x_BTD, edits)
    return x_BTD, rec


class GPTNeoX(nn.Module):
  vocab: int
  d_model: int
  n_layers: int
  n_heads: int
  d_mlp: int
  eps: float
  act: str
  n_rot: int
  theta: float
  parallel: bool = True
  attn_bias: bool = True
  tied: bool = False
  lm_head: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids_BT, mask_BT, n_blocks: int, head: bool = True,
               edits=None):
    check_inputs(input_ids_BT, mask_BT)
    embed_in = embed(self.vocab, self.d_model, "embed_in", self.dtype)
    x_BTD = embed_in(input_ids_BT)
    rec = {}
    x_BTD = hook(rec, "embed", x_BTD, edits)
    bias = attention_bias(mask_BT, causal=True)
    for i in range(n_blocks):
      block = NeoXBlock(self.n_heads, self.d_mlp, self.eps, self.act, self.n_rot, self.theta,
                        self.parallel, self.attn_bias, self.dtype, name=f"layers_{i}")
      x_BTD, acts = block(x_BTD, bias, block_edits(edits, i))
      record_block(rec, i, acts)
    if head:
      final = layer_norm(self.eps, "final_layer_norm", self.dtype)(x_BTD)
      final = hook(rec, "final", final, edits)
      if self.tied:
        rec["logits"] = embed_in.attend(final).astype(jnp.float32)
      elif self.lm_head:
        rec["logits"] = dense(self.vocab, "embed_out", self.dtype, False)(final).astype(jnp.float32)
    return rec


def from_hf_config(cfg, dtype=jnp.float32) -> GPTNeoX:
  theta, frac = rope_settings(cfg)
  d, H = cfg.hidden_size, cfg.num_attention_heads
  return GPTNeoX(vocab=cfg.vocab_size, d_model=d, n_layers=cfg.num_hidden_layers, n_heads=H,
                 d_mlp=cfg.intermediate_size, eps=cfg.layer_norm_eps, act=cfg.hidden_act,
                 n_rot=int((d // H) * frac), theta=theta, parallel=cfg.use_parallel_residual,
                 attn_bias=getattr(cfg, "attention_bias", True),
                 tied=bool(getattr(cfg, "tie_word_embeddings", False)), dtype=dtype)


# ---------------------------------------------------------------- HF key map
#
# nn.Linear weights are [out, in] -> transposed to Flax [in, out].
# query_key_value is fused PER HEAD: its 3*D output rows are laid out (head, {q,k,v},
# head_dim), so the weight reshapes to (H, 3, K, D) and q/k/v are index 0/1/2 on axis 1
# (bias: (H, 3, K)). The untied LM head is `embed_out.weight` in Pythia checkpoints and
# `lm_head.weight` in ones saved by transformers 5; hf.py tries both.

HF_PREFIX = "gpt_neox."


def _qkv(j, H):
  def f(w):
    if w.ndim == 2:  # weight [3D, D]
      D = w.shape[1]
      return w.reshape(H, 3, D // H, D)[:, j].reshape(D, D).T
    D = w.shape[0] // 3
    return w.reshape(H, 3, D // H)[:, j].reshape(D)
  return f


def _t(w):
  return w.T


def hf_key_map(cfg) -> dict[tuple[str, ...], tuple[str | tuple[str, ...], Callable | None]]:
  """Flax param path -> (HF key or alternatives, transform of the numpy array or None)."""
  H = cfg.num_attention_heads
  bias = getattr(cfg, "attention_bias", True)
  m = {("embed_in", "embedding"): ("gpt_neox.embed_in.weight", None),
       ("final_layer_norm", "scale"): ("gpt_neox.final_layer_norm.weight", None),
       ("final_layer_norm", "bias"): ("gpt_neox.final_layer_norm.bias", None)}
  if not getattr(cfg, "tie_word_embeddings", False):
    m[("embed_out", "kernel")] = (("embed_out.weight", "lm_head.weight"), _t)
  for i in range(cfg.num_hidden_layers):
    h, p = f"layers_{i}", f"gpt_neox.layers.{i}."
    for ln in ("input_layernorm", "post_attention_layernorm"):
      m[(h, ln, "scale")] = (p + ln + ".weight", None)
      m[(h, ln, "bias")] = (p + ln + ".bias", None)
    for j, n in enumerate("qkv"):
      m[(h, n, "kernel")] = (p + "attention.query_key_value.weight", _qkv(j, H))
      if bias:
        m[(h, n, "bias")] = (p + "attention.query_key_value.bias", _qkv(j, H))
    lin = [("attn_dense", "attention.dense", bias), ("dense_h_to_4h", "mlp.dense_h_to_4h", True),
           ("dense_4h_to_h", "mlp.dense_4h_to_h", True)]
    for ours, theirs, has_bias in lin:
      m[(h, ours, "kernel")] = (p + theirs + ".weight", _t)
      if has_bias:
        m[(h, ours, "bias")] = (p + theirs + ".bias", None)
  return m


HEAD_PATHS: tuple[tuple[str, ...], ...] = (("embed_out", "kernel"),)
