"""Llama 3.x (and SmolLM2), Qwen2/2.5 and Qwen3 as one Flax Linen block, with the HF key map.

Per block, as HF transformers' LlamaDecoderLayer / Qwen2DecoderLayer / Qwen3DecoderLayer
compute it (pre-RMSNorm, RMSNorm = float32 statistics, cast, times w):
  a = x + o(Attn(input_layernorm(x)));  y = a + down(act(gate(h)) * up(h)),
  h = post_attention_layernorm(a)   (HF's name for the pre-MLP norm)
Attention is grouped-query (query head h reads KV head floor(h * N / H)), head_dim from the
config (Qwen3: not D/H), scale head_dim^-1/2, rotary over the whole head in the NeoX
rotate-half layout with rope_type default, linear or llama3. The families differ by flags:
Qwen2 has q/k/v biases (o has none); Qwen3 RMS-normalises each query and key head before
the rotary embedding (q_norm, k_norm); `attention_bias` (Llama) puts biases on q/k/v/o and
`mlp_bias` on the MLP. Sliding windows come from `layer_types` and `sliding_window`
(Qwen's use_sliding_window), or a `sliding_window` alone applies to every layer (Mistral).

Hookpoints: attn_out = o_proj output, resid_mid = a, mlp_in = h, mlp_hidden = down_proj
input, mlp_out = down_proj output, final = model.norm output; logits float32.

HF key map (prefix `model.`; nn.Linear [out, in] -> Flax kernel [in, out]):
  model.embed_tokens.weight -> embed_tokens/embedding; model.norm.weight -> norm/scale;
  lm_head.weight -> lm_head/kernel (absent when tie_word_embeddings);
  model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight -> layers_{i}/<same>/scale;
  model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias} -> layers_{i}/{q,k,v,o};
  model.layers.{i}.self_attn.{q,k}_norm.weight -> layers_{i}/{q,k}_norm/scale;
  model.layers.{i}.mlp.{gate,up,down}_proj.weight -> layers_{i}/{gate,up,down}/kernel.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcode.models.lm.layers import (AttnSpec, DecoderLM, RMSNorm, activation, decoder_dims,
                                      gated_mlp, gqa_attention, hook, layer_windows,
                                      rope_from_config)

MODEL_TYPES = ("llama", "qwen2", "qwen3")


class LlamaBlock(nn.Module):
  spec: AttnSpec
  d_mlp: int
  eps: float
  act: str
  mlp_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, bias_B1QS, edits=None):
    rec = {}
    x_BTD = hook(rec, "resid_pre", x_BTD, edits)
    h_BTD = RMSNorm(self.eps, False, self.dtype, name="input_layernorm")(x_BTD)
    attn_BTD = hook(rec, "attn_out", gqa_attention(h_BTD, bias_B1QS, self.spec, self.dtype), edits)
    x_BTD = hook(rec, "resid_mid", x_BTD + attn_BTD, edits)
    h_BTD = RMSNorm(self.eps, False, self.dtype, name="post_attention_layernorm")(x_BTD)
    h_BTD = hook(rec, "mlp_in", h_BTD, edits)
    mlp_BTD = gated_mlp(rec, h_BTD, self.d_mlp, self.act, self.dtype, edits, self.mlp_bias)
    mlp_BTD = hook(rec, "mlp_out", mlp_BTD, edits)
    x_BTD = hook(rec, "resid_post", x_BTD + mlp_BTD, edits)
    return x_BTD, rec


def _attn_specs(cfg) -> tuple[AttnSpec, ...]:
  H, N, K = decoder_dims(cfg)
  qwen2, qwen3 = cfg.model_type == "qwen2", cfg.model_type == "qwen3"
  bias = bool(getattr(cfg, "attention_bias", False))
  rope = rope_from_config(cfg)
  return tuple(AttnSpec(H, N, K, K ** -0.5, rope, window=w, qkv_bias=qwen2 or bias,
                        o_bias=bias and not qwen2, qk_norm=qwen3, eps=cfg.rms_norm_eps)
               for w in layer_windows(cfg))


def from_hf_config(cfg, dtype=jnp.float32) -> DecoderLM:
  """The module of a LlamaConfig / Qwen2Config / Qwen3Config (ConfigError if unsupported)."""
  activation(cfg.hidden_act)  # validates the name
  return DecoderLM(block=LlamaBlock, vocab=cfg.vocab_size, d_model=cfg.hidden_size,
                   n_layers=cfg.num_hidden_layers, d_mlp=cfg.intermediate_size,
                   eps=cfg.rms_norm_eps, act=cfg.hidden_act, attn=_attn_specs(cfg),
                   mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
                   tied=bool(getattr(cfg, "tie_word_embeddings", False)), dtype=dtype)


# ---------------------------------------------------------------- HF key map

HF_PREFIX = "model."
HEAD_PATHS: tuple[tuple[str, ...], ...] = (("lm_head", "kernel"),)


def _t(w):
  return w.T


def add_linear(m: dict, ours: tuple[str, ...], theirs: str, bias: bool) -> None:
  m[ours + ("kernel",)] = (theirs + ".weight", _t)
  if bias:
    m[ours + ("bias",)] = (theirs + ".bias", None)


def add_norm(m: dict, ours: tuple[str, ...], theirs: str) -> None:
  m[ours + ("scale",)] = (theirs + ".weight", None)


def decoder_key_map(cfg, norms: tuple[str, ...], qkv_bias: bool, o_bias: bool,
                    qk_norm: bool, mlp_bias: bool) -> dict:
  """The key map of the Llama-style layout every decoder here shares; `norms` names the
  per-layer norms (Flax name = HF name)."""
  m = {("embed_tokens", "embedding"): ("model.embed_tokens.weight", None)}
  add_norm(m, ("norm",), "model.norm")
  if not getattr(cfg, "tie_word_embeddings", False):
    m[("lm_head", "kernel")] = ("lm_head.weight", _t)
  for i in range(cfg.num_hidden_layers):
    h, p = f"layers_{i}", f"model.layers.{i}."
    for n in norms:
      add_norm(m, (h, n), p + n)
    for n in "qkv":
      add_linear(m, (h, n), p + f"self_attn.{n}_proj", qkv_bias)
    add_linear(m, (h, "o"), p + "self_attn.o_proj", o_bias)
    if qk_norm:
      for n in ("q_norm", "k_norm"):
        add_norm(m, (h, n), p + "self_attn." + n)
    for n in ("gate", "up", "down"):
      add_linear(m, (h, n), p + f"mlp.{n}_proj", mlp_bias)
  return m


def hf_key_map(cfg) -> dict[tuple[str, ...], tuple[str | tuple[str, ...], Callable | None]]:
  """Flax param path -> (HF key, transform of the numpy array or None)."""
  spec = _attn_specs(cfg)[0]
  return decoder_key_map(cfg, ("input_layernorm", "post_attention_layernorm"), spec.qkv_bias,
                         spec.o_bias, spec.qk_norm, bool(getattr(cfg, "mlp_bias", False)))
