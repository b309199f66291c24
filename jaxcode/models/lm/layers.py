"""The pieces every transformer family here shares: masked attention (multi-head,
grouped-query, sliding-window, soft-capped), rotary embeddings (default, linear, llama3),
the plain and gated MLPs, LayerNorm and RMSNorm, dense layers, the hookpoint record, and
the freeze points (`Freeze`): every normalisation scale and attention pattern, recorded
from one forward and replayed in another (the local replacement model of attribution).

The block helpers (`self_attention`, `gqa_attention`, `mlp`, `gated_mlp`) create their Flax
submodules by name inside the calling block's compact `__call__`, so the parameter tree is
the block's own: a model file holds only its block wiring and its HF key map.

Hookpoints recorded per block (names as in jaxcode.models.lm):
  resid_pre   residual stream entering the block
  attn_out    what the attention sub-block adds to the residual stream
  resid_mid   residual stream after the attention add, before the MLP sub-block
  mlp_in      the normalised input the MLP reads (what a transcoder reads)
  mlp_hidden  MLP hidden activations, the input of the down projection
  mlp_out     what the MLP sub-block adds to the residual stream
  resid_post  residual stream leaving the block
Shapes: B batch, T positions (Q queries, S keys), D model width, H query heads, G query
heads per KV head, N KV heads, K head dim, F MLP width or rotary frequencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Sequence

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


# ---------------------------------------------------------------- freezing

class Freeze:
  """The nonlinear denominators of one forward: every normalisation's 1/scale and every
  attention pattern, in the order the forward computes them.

  Recording (values=None) collects them; replaying hands the recorded arrays back in the same
  order in place of the ones the forward would compute. A replayed forward of the same inputs
  gives the same values, but its normalisations and attention are then linear maps fixed at
  the recorded point: with the MLP outputs held too, the model is affine in what is added
  at any hookpoint (the local replacement model of circuit tracing). Trace-time state: use
  inside one traced function (jit, vjp) around module.apply.
  """

  def __init__(self, values=None):
    self.recording = values is None
    self.values = [] if values is None else list(values)
    self.kinds: list[str] = []
    self.used = 0


_FREEZES: list[Freeze] = []


@contextlib.contextmanager
def freezing(values=None):
  """`with freezing() as f:` records into f.values; `with freezing(values):` replays them."""
  f = Freeze(values)
  _FREEZES.append(f)
  try:
    yield f
  finally:
    _FREEZES.pop()


def frozen(kind: str, x):
  """x as computed (no freeze active, or recording), else the next recorded value."""
  if not _FREEZES:
    return x
  f = _FREEZES[-1]
  if f.recording:
    f.values.append(x)
    f.kinds.append(kind)
    return x
  if f.used >= len(f.values):
    raise ConfigError(f"freeze replay: {kind} value {f.used + 1} requested but only "
                      f"{len(f.values)} were recorded: expected the recorded forward's inputs")
  v = f.values[f.used]
  if tuple(v.shape) != tuple(x.shape):
    raise ConfigError(f"freeze replay: recorded {kind} value {f.used} has shape {v.shape}: "
                      f"expected {x.shape} (the recorded forward's inputs)")
  f.used += 1
  return jnp.asarray(v).astype(x.dtype)


# ---------------------------------------------------------------- layers

def dense(features: int, name: str, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def layer_norm(eps: float, name: str, dtype) -> "LayerNorm":
  return LayerNorm(eps, dtype, name=name)


def embed(n: int, d_model: int, name: str, dtype) -> nn.Embed:
  return nn.Embed(n, d_model, dtype=dtype, param_dtype=jnp.float32, name=name)


class LayerNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis in float32 (var as
  mean(x^2) - mean^2, Flax's fast variance), cast to dtype; 1/sqrt(var + eps) is a freeze
  point. Parameters `scale`, `bias` as flax.linen.LayerNorm's."""
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(x32 * x32, axis=-1, keepdims=True) - mean * mean, 0.0)
    inv = frozen("layernorm", jax.lax.rsqrt(var + self.eps))
    return ((x32 - mean) * (inv * scale) + bias).astype(self.dtype)


class RMSNorm(nn.Module):
  """x / rms(x) over the last axis, statistics in float32, with a learned gain `scale`.

  Llama/Qwen (plus_one=False): normalise in float32, cast to the compute dtype, times w.
  Gemma (plus_one=True): normalise and multiply by (1 + w) in float32, then cast.
  1/rms(x) is a freeze point (see Freeze).
  """
  eps: float
  plus_one: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    w = self.param("scale", init, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    inv = frozen("rmsnorm", jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
    n32 = x32 * inv
    if self.plus_one:
      return (n32 * (1.0 + w)).astype(self.dtype)
    return w.astype(self.dtype) * n32.astype(self.dtype)


# ---------------------------------------------------------------- attention

def attention_bias(mask_BT: jax.Array, causal: bool, window: int | None = None) -> jax.Array:
  """Additive bias [B, 1, Q, S]: 0 where query q may see key s, float32 min elsewhere.

  window W (causal only): key s is visible from query q iff q - W < s <= q, W keys
  including q itself, as HF's sliding-window masks. A finite minimum (as HF uses) keeps
  an all-padding row finite instead of NaN.
  """
  T = mask_BT.shape[1]
  allowed_BQK = jnp.broadcast_to(mask_BT[:, None, :].astype(bool), (mask_BT.shape[0], T, T))
  if causal:
    allowed_BQK = allowed_BQK & jnp.tril(jnp.ones((T, T), bool))[None]
  if window is not None:
    q_T1, s_1T = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    allowed_BQK = allowed_BQK & (q_T1 - s_1T < window)[None]
  return jnp.where(allowed_BQK, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def attend(q_BTHK, k_BSNK, v_BSNK, bias_B1QS, scale: float, softcap: float | None = None):
  """softmax(q k^T * scale [soft-capped] + bias) v, logits and softmax in float32.

  Grouped-query: with N KV heads and H query heads, query head h reads KV head
  floor(h * N / H) (HF's repeat_kv). Soft-cap c: logits -> c * tanh(logits / c), before
  the mask (Gemma 2). Returns [B, T, H*K].
  """
  B, T, H, K = q_BTHK.shape
  N = k_BSNK.shape[2]
  q_BTNGK = q_BTHK.reshape(B, T, N, H // N, K)
  logits = jnp.einsum("btngk,bsnk->bngts", q_BTNGK, k_BSNK,
                      preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  probs = frozen("attention", jax.nn.softmax(logits + bias_B1QS[:, :, None], axis=-1))
  probs = probs.astype(v_BSNK.dtype)
  out = jnp.einsum("bngts,bsnk->btngk", probs, v_BSNK)
  return out.reshape(B, T, H * K)


def rotate(x_BTHK, inv_freq_F):
  """NeoX rotate-half rotary embedding of the first 2F dims of each head at positions
  0..T-1; cos and sin in float32, cast to x's dtype (as HF)."""
  n_rot = 2 * inv_freq_F.shape[0]
  if n_rot == 0:
    return x_BTHK
  T = x_BTHK.shape[1]
  freqs_TF = jnp.arange(T, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq_F, jnp.float32)[None]
  emb_TR = jnp.concatenate([freqs_TF, freqs_TF], axis=-1)
  cos, sin = jnp.cos(emb_TR)[None, :, None], jnp.sin(emb_TR)[None, :, None]
  x_rot, x_pass = x_BTHK[..., :n_rot], x_BTHK[..., n_rot:]
  half = n_rot // 2
  rot_half = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  x_rot = (x_rot * cos.astype(x_BTHK.dtype) + rot_half * sin.astype(x_BTHK.dtype))
  return jnp.concatenate([x_rot, x_pass], axis=-1)


def rotary(x_BTHK, n_rot: int, theta: float):
  """Default rotary embedding on the first n_rot dims of each head (GPT-NeoX)."""
  return rotate(x_BTHK, Rope(theta).inv_freq(n_rot))


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


# ---------------------------------------------------------------- rotary settings

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope:
  """Rotary settings of one layer type, as HF's `rope_parameters` hold them.

  kind 'default': inv_j = theta^(-2j/dim); 'linear': inv_j / factor; 'llama3': wavelengths
  2 pi / inv_j above original_max / low_freq_factor are divided by factor, those below
  original_max / high_freq_factor kept, and the band between interpolated smoothly.
  """
  theta: float = 10000.0
  kind: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max: float = 8192.0

  def inv_freq(self, dim: int) -> np.ndarray:
    """float32 [dim // 2] inverse frequencies, computed in float32 as HF does."""
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = np.float32(1.0) / (np.float32(self.theta) ** exps)
    if self.kind == "linear":
      return (inv / np.float32(self.factor)).astype(np.float32)
    if self.kind != "llama3":
      return inv.astype(np.float32)
    f = np.float32(self.factor)
    low_wl = np.float32(self.original_max / self.low_freq_factor)
    high_wl = np.float32(self.original_max / self.high_freq_factor)
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wl, inv / f, inv)
    smooth = ((np.float32(self.original_max) / wavelen - np.float32(self.low_freq_factor))
              / np.float32(self.high_freq_factor - self.low_freq_factor))
    smoothed = (1 - smooth) * scaled / f + smooth * scaled
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _rope_dict(cfg, layer_type: str | None) -> dict:
  """The rope settings of one layer type: v5 `rope_parameters` (flat, or nested by layer
  type as Gemma 3's), else the older `rope_theta` / `rope_scaling` fields."""
  rp = getattr(cfg, "rope_parameters", None) or {}
  if any(isinstance(v, dict) for v in rp.values()):
    if layer_type not in rp:
      raise ConfigError(f"rope_parameters has no entry for layer type {layer_type!r}: "
                        f"expected one of {sorted(rp)}")
    rp = rp[layer_type]
  if not rp:
    rp = dict(getattr(cfg, "rope_scaling", None) or {})
    theta = getattr(cfg, "rope_theta", None)
    if layer_type == "sliding_attention" and getattr(cfg, "rope_local_base_freq", None):
      rp, theta = {}, cfg.rope_local_base_freq
    rp.setdefault("rope_theta", 10000.0 if theta is None else theta)
  return dict(rp)


def rope_from_config(cfg, layer_type: str | None = None) -> Rope:
  """Rope of one layer type; ConfigError for partial rotary or an unsupported rope type."""
  rp = _rope_dict(cfg, layer_type)
  kind = rp.get("rope_type", rp.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise ConfigError(f"{cfg.model_type} rope_type={kind!r}: expected one of {list(ROPE_TYPES)}")
  frac = rp.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None))
  if frac is not None and float(frac) != 1.0:
    raise ConfigError(f"{cfg.model_type} partial_rotary_factor={frac}: expected 1.0 (rotary "
                      "over the whole head)")
  if kind == "default":
    return Rope(float(rp["rope_theta"]))
  orig = rp.get("original_max_position_embeddings",
                getattr(cfg, "max_position_embeddings", 8192))
  return Rope(float(rp["rope_theta"]), kind, float(rp.get("factor", 1.0)),
              float(rp.get("low_freq_factor", 1.0)), float(rp.get("high_freq_factor", 4.0)),
              float(orig))


# ---------------------------------------------------------------- decoder attention

@dataclasses.dataclass(frozen=True)
class AttnSpec:
  """One decoder layer's attention, as Llama, Qwen2/3 and Gemma 2/3 configure it.

  n_kv_heads < n_heads is grouped-query (1: multi-query); window: sliding-window size of
  this layer or None; qk_norm: RMSNorm of each query and key head before the rotary
  embedding (Qwen3, Gemma 3), with Gemma's (1 + w) gain when norm_plus_one; softcap: the
  attention logit soft-cap (Gemma 2).
  """
  n_heads: int
  n_kv_heads: int
  head_dim: int
  scale: float
  rope: Rope
  window: int | None = None
  qkv_bias: bool = False
  o_bias: bool = False
  qk_norm: bool = False
  norm_plus_one: bool = False
  eps: float = 1e-6
  softcap: float | None = None


def gqa_attention(h_BTD, bias_B1QS, spec: AttnSpec, dtype):
  """Attention of the block's normed input: q/k/v projections (optional biases, per-head
  q/k norms), rotary, masked grouped-query attention, output projection `o`. Returns the
  `o` output; the block records what it adds to the residual stream."""
  B, T, D = h_BTD.shape
  H, N, K = spec.n_heads, spec.n_kv_heads, spec.head_dim
  q = dense(H * K, "q", dtype, spec.qkv_bias)(h_BTD).reshape(B, T, H, K)
  k = dense(N * K, "k", dtype, spec.qkv_bias)(h_BTD).reshape(B, T, N, K)
  v = dense(N * K, "v", dtype, spec.qkv_bias)(h_BTD).reshape(B, T, N, K)
  if spec.qk_norm:
    q = RMSNorm(spec.eps, spec.norm_plus_one, dtype, name="q_norm")(q)
    k = RMSNorm(spec.eps, spec.norm_plus_one, dtype, name="k_norm")(k)
  inv_freq = spec.rope.inv_freq(K)
  q, k = rotate(q, inv_freq), rotate(k, inv_freq)
  out_BTF = attend(q, k, v, bias_B1QS, spec.scale, spec.softcap)
  return dense(D, "o", dtype, spec.o_bias)(out_BTF)


def layer_windows(cfg) -> tuple[int | None, ...]:
  """Sliding window per layer: `config.sliding_window` on the layers `layer_types` marks
  'sliding_attention'; without layer_types a set window applies to every layer (Mistral)."""
  L, W = cfg.num_hidden_layers, getattr(cfg, "sliding_window", None)
  if getattr(cfg, "use_sliding_window", True) is False:
    W = None
  types = getattr(cfg, "layer_types", None)
  if types is None:
    return (W,) * L
  if len(types) != L or set(types) - {"sliding_attention", "full_attention"}:
    raise ConfigError(f"layer_types={list(types)}: expected {L} entries, each "
                      "'sliding_attention' or 'full_attention'")
  if W is None and "sliding_attention" in types:
    raise ConfigError("sliding_window=None with sliding_attention layers: expected a window size")
  return tuple(W if t == "sliding_attention" else None for t in types)


def layer_biases(mask_BT, windows: Sequence[int | None]) -> dict:
  """The causal attention bias of each distinct window (None: full attention)."""
  return {w: attention_bias(mask_BT, causal=True, window=w) for w in set(windows)}


# ---------------------------------------------------------------- MLP

def mlp(rec: dict, h_BTD, d_mlp: int, act: str, names: Sequence[str], dtype, edits):
  """dense -> act (recorded as `mlp_hidden`) -> dense (recorded as `mlp_out`); names: the two
  projections' parameter names."""
  hid_BTF = activation(act)(dense(d_mlp, names[0], dtype)(h_BTD))
  hid_BTF = hook(rec, "mlp_hidden", hid_BTF, edits)
  out_BTD = dense(h_BTD.shape[-1], names[1], dtype)(hid_BTF)
  return hook(rec, "mlp_out", out_BTD, edits)


def gated_mlp(rec: dict, h_BTD, d_mlp: int, act: str, dtype, edits, use_bias: bool = False):
  """down(act(gate(h)) * up(h)); the product is recorded as `mlp_hidden`; returns the down
  projection's output (the block records what it adds to the residual stream)."""
  gate_BTF = dense(d_mlp, "gate", dtype, use_bias)(h_BTD)
  up_BTF = dense(d_mlp, "up", dtype, use_bias)(h_BTD)
  hid_BTF = hook(rec, "mlp_hidden", activation(act)(gate_BTF) * up_BTF, edits)
  return dense(h_BTD.shape[-1], "down", dtype, use_bias)(hid_BTF)


# ---------------------------------------------------------------- decoder-only LM

class DecoderLM(nn.Module):
  """The decoder skeleton Llama, Qwen2/3 and Gemma 2/3 share: token embedding (times
  sqrt(D) cast to the compute dtype when `gemma`), the blocks, the final RMSNorm, a tied or
  untied LM head with an optional final logit soft-cap (Gemma 2).

  `block` is the family's block class, called as block(spec, d_mlp, eps, act, mlp_bias,
  dtype) on (x_BTD, bias_B1QS, edits) and returning (x_BTD, record); `attn` holds each
  layer's AttnSpec (its window and rotary settings vary by layer type).
  """
  block: Any
  vocab: int
  d_model: int
  n_layers: int
  d_mlp: int
  eps: float
  act: str
  attn: tuple[AttnSpec, ...]
  gemma: bool = False
  mlp_bias: bool = False
  final_softcap: float | None = None
  tied: bool = False
  lm_head: bool = True
  dtype: Any = jnp.float32

  @property
  def n_heads(self) -> int:
    return self.attn[0].n_heads

  @property
  def n_kv_heads(self) -> int:
    return self.attn[0].n_kv_heads

  @nn.compact
  def __call__(self, input_ids_BT, mask_BT, n_blocks: int, head: bool = True, edits=None):
    check_inputs(input_ids_BT, mask_BT)
    embed_tokens = embed(self.vocab, self.d_model, "embed_tokens", self.dtype)
    x_BTD = embed_tokens(input_ids_BT)
    if self.gemma:
      x_BTD = x_BTD * jnp.asarray(math.sqrt(self.d_model), jnp.float32).astype(self.dtype)
    rec = {}
    x_BTD = hook(rec, "embed", x_BTD, edits)
    biases = layer_biases(mask_BT, [s.window for s in self.attn[:n_blocks]])
    for i in range(n_blocks):
      block = self.block(self.attn[i], self.d_mlp, self.eps, self.act, self.mlp_bias, self.dtype,
                         name=f"layers_{i}")
      x_BTD, acts = block(x_BTD, biases[self.attn[i].window], block_edits(edits, i))
      record_block(rec, i, acts)
    if head:
      final = RMSNorm(self.eps, self.gemma, self.dtype, name="norm")(x_BTD)
      final = hook(rec, "final", final, edits)
      if self.tied:
        logits = embed_tokens.attend(final).astype(jnp.float32)
      elif self.lm_head:
        logits = dense(self.vocab, "lm_head", self.dtype, False)(final).astype(jnp.float32)
      else:
        return rec
      if self.final_softcap is not None:
        logits = jnp.tanh(logits / self.final_softcap) * self.final_softcap
      rec["logits"] = logits
    return rec


def decoder_dims(cfg) -> tuple[int, int, int]:
  """(query heads, KV heads, head dim) of a decoder config; ConfigError if the KV heads do
  not divide the query heads."""
  H = cfg.num_attention_heads
  N = getattr(cfg, "num_key_value_heads", None) or H
  K = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
  if H % N:
    raise ConfigError(f"num_key_value_heads={N}: expected a divisor of num_attention_heads={H}")
  return H, N, K


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
