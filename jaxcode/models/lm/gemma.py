"""Gemma 2 and Gemma 3 (text) as one Flax Linen block, with the HF key map.

Per block, as HF transformers' Gemma2DecoderLayer / Gemma3DecoderLayer compute it (sandwich
norms; every RMSNorm multiplies by (1 + w) in float32, then casts):
  a = x + post_attention_layernorm(o(Attn(input_layernorm(x))))
  y = a + post_feedforward_layernorm(down(gelu_tanh(gate(h)) * up(h))),
  h = pre_feedforward_layernorm(a)
Embeddings are multiplied by sqrt(D) cast to the compute dtype. Attention is grouped-query
(Gemma 3 270m/1B: one KV head), scale query_pre_attn_scalar^-1/2, rotary over the whole
head (NeoX layout). Gemma 2 soft-caps attention logits (c tanh(s / c), before the mask) and
the final logits; Gemma 3 instead RMS-normalises each query and key head before the rotary
embedding (q_norm, k_norm, also (1 + w)). Layers `layer_types` marks 'sliding_attention' see
the last `sliding_window` keys (Gemma 2: even layers; Gemma 3: five of six); Gemma 3 keeps
rotary settings per layer type (v5 rope_parameters {'sliding_attention': local theta,
'full_attention': global theta and scaling}).

Hookpoints: attn_out = post_attention_layernorm output and mlp_out = post_feedforward_layernorm
output (what is added to the residual stream; Gemma Scope 2's mlp_out), resid_mid = a,
mlp_in = h (pre_feedforward_layernorm output), mlp_hidden = down_proj input, embed = scaled
embedding, final = model.norm output, logits float32 after the soft-cap.

HF key map: as llama.py's (prefix `model.`, Linear weights transposed, q_norm/k_norm for
Gemma 3) with four norms per layer, input_layernorm, post_attention_layernorm,
pre_feedforward_layernorm and post_feedforward_layernorm -> layers_{i}/<same>/scale; the
LM head is tied to embed_tokens. A Gemma 3 multimodal checkpoint (model_type 'gemma3') is
read as its language model: the config's `text_config`, the weights under
`model.language_model.` (transformers 5) or `language_model.model.` (older saves); the
vision tower is ignored.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcode.errors import ConfigError
from jaxcode.models.lm.layers import (AttnSpec, DecoderLM, RMSNorm, activation, decoder_dims,
                                      gated_mlp, gqa_attention, hook, layer_windows,
                                      rope_from_config)
from jaxcode.models.lm.llama import decoder_key_map

MODEL_TYPES = ("gemma2", "gemma3_text", "gemma3")
MULTIMODAL_PREFIXES = ("model.language_model.", "language_model.model.")
NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
         "post_feedforward_layernorm")


class GemmaBlock(nn.Module):
  spec: AttnSpec
  d_mlp: int
  eps: float
  act: str
  mlp_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, bias_B1QS, edits=None):
    norm = lambda name: RMSNorm(self.eps, True, self.dtype, name=name)
    rec = {}
    x_BTD = hook(rec, "resid_pre", x_BTD, edits)
    attn_BTD = gqa_attention(norm(NORMS[0])(x_BTD), bias_B1QS, self.spec, self.dtype)
    attn_BTD = hook(rec, "attn_out", norm(NORMS[1])(attn_BTD), edits)
    x_BTD = hook(rec, "resid_mid", x_BTD + attn_BTD, edits)
    h_BTD = hook(rec, "mlp_in", norm(NORMS[2])(x_BTD), edits)
    mlp_BTD = gated_mlp(rec, h_BTD, self.d_mlp, self.act, self.dtype, edits, self.mlp_bias)
    mlp_BTD = hook(rec, "mlp_out", norm(NORMS[3])(mlp_BTD), edits)
    x_BTD = hook(rec, "resid_post", x_BTD + mlp_BTD, edits)
    return x_BTD, rec


def text_config(cfg):
  """The language-model config: a Gemma 3 multimodal config's text_config, else cfg."""
  return cfg.text_config if cfg.model_type == "gemma3" else cfg


def _act(cfg) -> str:
  act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
  activation(act)  # validates the name
  return act


def _attn_specs(cfg) -> tuple[AttnSpec, ...]:
  if getattr(cfg, "use_bidirectional_attention", False):
    raise ConfigError(f"{cfg.model_type} use_bidirectional_attention=True: only causal "
                      "language models are supported")
  H, N, K = decoder_dims(cfg)
  types = getattr(cfg, "layer_types", None) or ("full_attention",) * cfg.num_hidden_layers
  nested = any(isinstance(v, dict) for v in (getattr(cfg, "rope_parameters", None) or {}).values())
  ropes = {t: rope_from_config(cfg, t if nested or cfg.model_type == "gemma3_text" else None)
           for t in set(types)}
  cap = getattr(cfg, "attn_logit_softcapping", None)
  return tuple(AttnSpec(H, N, K, float(cfg.query_pre_attn_scalar) ** -0.5, ropes[t], window=w,
                        qkv_bias=bool(getattr(cfg, "attention_bias", False)),
                        o_bias=bool(getattr(cfg, "attention_bias", False)),
                        qk_norm=cfg.model_type == "gemma3_text", norm_plus_one=True,
                        eps=cfg.rms_norm_eps, softcap=None if cap is None else float(cap))
               for t, w in zip(types, layer_windows(cfg)))


def from_hf_config(cfg, dtype=jnp.float32) -> DecoderLM:
  """The module of a Gemma2Config / Gemma3TextConfig / Gemma3Config's text part (ConfigError
  if unsupported)."""
  cfg = text_config(cfg)
  cap = getattr(cfg, "final_logit_softcapping", None)
  return DecoderLM(block=GemmaBlock, vocab=cfg.vocab_size, d_model=cfg.hidden_size,
                   n_layers=cfg.num_hidden_layers, d_mlp=cfg.intermediate_size,
                   eps=cfg.rms_norm_eps, act=_act(cfg), attn=_attn_specs(cfg), gemma=True,
                   final_softcap=None if cap is None else float(cap),
                   tied=bool(getattr(cfg, "tie_word_embeddings", True)), dtype=dtype)


# ---------------------------------------------------------------- HF key map

HF_PREFIX = "model."
HEAD_PATHS: tuple[tuple[str, ...], ...] = (("lm_head", "kernel"),)


def hf_key_map(cfg) -> dict[tuple[str, ...], tuple[str | tuple[str, ...], Callable | None]]:
  """Flax param path -> (HF key or alternatives, transform of the numpy array or None)."""
  multimodal, cfg = cfg.model_type == "gemma3", text_config(cfg)
  bias = bool(getattr(cfg, "attention_bias", False))
  m = decoder_key_map(cfg, NORMS, bias, bias, cfg.model_type == "gemma3_text", False)
  if not multimodal:
    return m
  alternatives = lambda k: (tuple(p + k[len("model."):] for p in MULTIMODAL_PREFIXES)
                            if k.startswith("model.") else (k, "language_model." + k))
  return {path: (alternatives(k), f) for path, (k, f) in m.items()}
