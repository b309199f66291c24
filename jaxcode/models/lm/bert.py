"""BERT (post-LayerNorm encoder) as a Flax Linen module, with its HF key map beside it.

Per block, as HF transformers' BertLayer computes it:
  a = LN_attn(x + Dense_o(SelfAttn(x)));  y = LN_out(a + Dense_out(act(Dense_in(a))))
Hookpoints: `embed` after the embedding LayerNorm; `attn_out` = attention.output.dense
output and `mlp_out` = output.dense output, both before the residual add and LayerNorm;
`mlp_hidden` = intermediate activations after the nonlinearity; `resid_post` the block
output; `resid_mid` = a (the attention LayerNorm output) and `mlp_in` the same tensor, what
the MLP reads (an edit at mlp_in reaches the MLP only, one at resid_mid also the residual
that LN_out adds). BERT has no final LayerNorm, so `final` is the last block's output (HF's
last_hidden_state). `logits` are the masked-LM head's (transform dense, act, LayerNorm,
decoder tied to the word embeddings, plus bias) and need a checkpoint with an MLM head
(BertForMaskedLM / BertForPreTraining); encoder-only checkpoints such as
all-MiniLM-L6-v2 have none. Token type ids are all 0 and positions 0..T-1.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcode.errors import ConfigError
from jaxcode.models.lm.layers import (activation, attention_bias, block_edits, check_inputs, dense,
                                      embed, hook, layer_norm, mlp, record_block, self_attention)


class BertBlock(nn.Module):
  n_heads: int
  d_mlp: int
  eps: float
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, bias_B1QK, edits=None):
    rec = {}
    x_BTD = hook(rec, "resid_pre", x_BTD, edits)
    K = x_BTD.shape[-1] // self.n_heads
    attn_BTD = self_attention(rec, x_BTD, bias_B1QK, self.n_heads, K ** -0.5,
                              ("query", "key", "value", "attn_dense"), self.dtype, edits)
    a_BTD = layer_norm(self.eps, "attn_ln", self.dtype)(x_BTD + attn_BTD)
    a_BTD = hook(rec, "resid_mid", a_BTD, edits)
    h_BTD = hook(rec, "mlp_in", a_BTD, edits)
    mlp_BTD = mlp(rec, h_BTD, self.d_mlp, self.act, ("intermediate", "output"), self.dtype, edits)
    y_BTD = layer_norm(self.eps, "output_ln", self.dtype)(a_BTD + mlp_BTD)
    y_BTD = hook(rec, "resid_post", y_BTD, edits)
    return y_BTD, rec


class Bert(nn.Module):
  vocab: int
  d_model: int
  n_layers: int
  n_heads: int
  d_mlp: int
  n_ctx: int
  n_types: int
  eps: float
  act: str
  mlm_head: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids_BT, mask_BT, n_blocks: int, head: bool = True,
               edits=None):
    check_inputs(input_ids_BT, mask_BT)
    T = input_ids_BT.shape[1]
    emb = lambda n, name: embed(n, self.d_model, name, self.dtype)
    words = emb(self.vocab, "word_embeddings")
    x_BTD = (words(input_ids_BT) + emb(self.n_types, "token_type_embeddings")(
        jnp.zeros_like(input_ids_BT)) + emb(self.n_ctx, "position_embeddings")(jnp.arange(T))[None])
    x_BTD = layer_norm(self.eps, "embeddings_ln", self.dtype)(x_BTD)
    rec = {}
    x_BTD = hook(rec, "embed", x_BTD, edits)
    bias = attention_bias(mask_BT, causal=False)
    for i in range(n_blocks):
      x_BTD, acts = BertBlock(self.n_heads, self.d_mlp, self.eps, self.act, self.dtype,
                              name=f"layer_{i}")(x_BTD, bias, block_edits(edits, i))
      record_block(rec, i, acts)
    if head:
      x_BTD = hook(rec, "final", x_BTD, edits)
      if self.mlm_head:
        h = activation(self.act)(dense(self.d_model, "mlm_transform", self.dtype)(x_BTD))
        h = layer_norm(self.eps, "mlm_ln", self.dtype)(h)
        b = self.param("mlm_bias", nn.initializers.zeros, (self.vocab,), jnp.float32)
        rec["logits"] = (words.attend(h) + b).astype(jnp.float32)
    return rec


def from_hf_config(cfg, dtype=jnp.float32) -> Bert:
  pe = getattr(cfg, "position_embedding_type", "absolute")
  if pe not in (None, "absolute"):
    raise ConfigError(f"bert position_embedding_type={pe!r}: only 'absolute' is supported")
  if getattr(cfg, "is_decoder", False):
    raise ConfigError("bert is_decoder=True: only the bidirectional encoder is supported")
  return Bert(vocab=cfg.vocab_size, d_model=cfg.hidden_size, n_layers=cfg.num_hidden_layers,
              n_heads=cfg.num_attention_heads, d_mlp=cfg.intermediate_size,
              n_ctx=cfg.max_position_embeddings, n_types=cfg.type_vocab_size,
              eps=cfg.layer_norm_eps, act=cfg.hidden_act, dtype=dtype)


# ---------------------------------------------------------------- HF key map
#
# nn.Linear weights [out, in] -> Flax kernels [in, out]; LayerNorm weight/bias -> scale/bias
# (old checkpoints say gamma/beta; hf.py tries both). Keys carry a `bert.` prefix in
# BertForMaskedLM checkpoints and none in BertModel ones (all-MiniLM-L6-v2). The MLM
# decoder weight is tied to the word embeddings; its bias is `cls.predictions.bias`.

HF_PREFIX = "bert."


def _t(w):
  return w.T


def _ln(m, ours, theirs):
  m[ours + ("scale",)] = ((theirs + ".weight", theirs + ".gamma"), None)
  m[ours + ("bias",)] = ((theirs + ".bias", theirs + ".beta"), None)


def _lin(m, ours, theirs):
  m[ours + ("kernel",)] = (theirs + ".weight", _t)
  m[ours + ("bias",)] = (theirs + ".bias", None)


def hf_key_map(cfg) -> dict[tuple[str, ...], tuple[str | tuple[str, ...], Callable | None]]:
  """Flax param path -> (HF key or alternatives, transform of the numpy array or None)."""
  m = {}
  for n in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
    m[(n, "embedding")] = (f"bert.embeddings.{n}.weight", None)
  _ln(m, ("embeddings_ln",), "bert.embeddings.LayerNorm")
  for i in range(cfg.num_hidden_layers):
    h, p = f"layer_{i}", f"bert.encoder.layer.{i}."
    for n in ("query", "key", "value"):
      _lin(m, (h, n), p + "attention.self." + n)
    _lin(m, (h, "attn_dense"), p + "attention.output.dense")
    _ln(m, (h, "attn_ln"), p + "attention.output.LayerNorm")
    _lin(m, (h, "intermediate"), p + "intermediate.dense")
    _lin(m, (h, "output"), p + "output.dense")
    _ln(m, (h, "output_ln"), p + "output.LayerNorm")
  _lin(m, ("mlm_transform",), "cls.predictions.transform.dense")
  _ln(m, ("mlm_ln",), "cls.predictions.transform.LayerNorm")
  m[("mlm_bias",)] = (("cls.predictions.bias", "cls.predictions.decoder.bias"), None)
  return m


HEAD_PATHS: tuple[tuple[str, ...], ...] = (
    ("mlm_transform", "kernel"), ("mlm_transform", "bias"), ("mlm_ln", "scale"),
    ("mlm_ln", "bias"), ("mlm_bias",))
