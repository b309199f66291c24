"""Attribution graphs: which features, through which paths, make a causal LM predict what it does.

Notation (one prompt of T tokens, a transcoder set or cross-layer transcoder covering every
layer j = 0..L-1 of the model, raw activation units):

    x_j      activation at hook_in(j) (e.g. blocks.{j}.mlp_in), [T, D]
    pre_j    = x_j W_enc[j]^T + b_enc[j]        a_j = act(pre_j)       [T, F_j]
    y_hat_m  = b_dec[m] + sum_{j <= m < j + S_j} a_j W_dec[j][:, m - j] + x_m W_skip[m]
    e_m      = y_m - y_hat_m                     the error node, y_m the true MLP output

S_j output slots (1 for a per-layer transcoder, L - j for a CLT).

**Local replacement model.** One clean forward records every normalisation's 1/scale and every
attention pattern (`models.lm.layers.Freeze`) and the MLP outputs y_m. The frozen forward
replays those values and sets hook_out(m) := y_m + (x_m - x_m^clean) W_skip[m] + u_m, with an
addition u_emb at `embed`. At u = 0 it reproduces the clean forward (every residual and the
logits); as a function of the injections u it is affine: residual adds, attention with fixed
patterns, normalisations with fixed scales, the skip maps. Feature a_s of layer j at position
c is the injection a_s W_dec[j][i, m - j] at (m, c) for its output layers m; error (m, c) the
injection e_m[c]; token c the embedding value (for learned positions it includes the position
embedding).

**Nodes** (circuit-tracer's order): selected features (nonzero a_j at positions other than the
zeroed ones, position 0 by default: BOS) | errors, layer-major L*T | tokens T | logits. Logit
nodes: at the last position, the fewest tokens covering `desired_logit_prob` of the model's
probability, at most `max_n_logits`; the target is the logit minus the mean logit before any
soft-cap, i.e. final[T-1] . (W_U[:, v] - mean_v' W_U[:, v']).

**Edges.** A[t, s] = the change of target t's pre-activation (feature: pre_t, its gate never
enters) or demeaned logit per unit of source s in the frozen model = <grad_u target, source
vector>. One vector-Jacobian product of the frozen forward per target gives the gradient for
every source at once; they are vmapped over batches of `batch_size` targets (jitted; the
batch axis sharded over the mesh's `data` axis when a mesh is given) and contracted with the
activation-scaled decoder rows, the errors and the token vectors. Memory per batch:
batch_size * L * T * D floats of cotangents plus the grouped decoder rows.

**Budget.** Rows are computed for the logits first, then for features in order of their
estimated influence on the logits (from the rows computed so far, refreshed every batch),
up to `max_feature_nodes` (None: every active feature). Selected features are the ones with
rows; the others are dropped as sources (their effect then appears nowhere in the graph).

**Exactness** (tests): target(u) = sum_s A[t, s] + c_t for the frozen model, with c_t the
target when every node source is removed (biases, position-0 terms); removing source s moves
target t by -A[t, s].
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcode import parallel
from jaxcode.analysis import circuit_graph
from jaxcode.analysis.replacement_eval import Replacement, hook_names
from jaxcode.errors import ConfigError
from jaxcode.models import sae_io
from jaxcode.models.lm.layers import freezing

ACTIVATIONS = ("relu", "jumprelu", "topk")
_SAE_ACT = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}


# ---------------------------------------------------------------- the dictionaries

@dataclasses.dataclass(frozen=True)
class Coders:
  """Transcoders of every layer in raw units (see the module docstring): per layer j,
  W_enc[j] [F_j, D] (rows = features), b_enc[j] [F_j], W_dec[j] [F_j, S_j, D] (slot s writes
  to layer j + s), b_dec [L, D], threshold[j] [F_j] (jumprelu), W_skip [L, D, D] applied as
  x W_skip[j] (None: no skip). `layers`: the model layers, 0..L-1; `scan`: an id for graphs."""
  layers: tuple
  hook_in: str
  hook_out: str
  W_enc: tuple
  b_enc: tuple
  W_dec: tuple
  b_dec: np.ndarray
  activation: str = "relu"
  threshold: tuple | None = None
  k: int | None = None
  W_skip: np.ndarray | None = None
  scan: str = ""

  @property
  def n_layers(self) -> int:
    return len(self.layers)

  @property
  def n_slots(self) -> int:
    return max(w.shape[1] for w in self.W_dec)

  def encode(self, j: int, x_TD):
    """(pre, codes) of layer j, jax arrays [T, F_j]."""
    pre = x_TD @ jnp.asarray(self.W_enc[j]).T + jnp.asarray(self.b_enc[j])
    if self.activation == "relu":
      return pre, jnp.maximum(pre, 0)
    if self.activation == "jumprelu":
      return pre, jnp.maximum(pre, 0) * (pre > jnp.asarray(self.threshold[j]))
    v, i = jax.lax.top_k(pre, int(self.k))
    rows = jnp.arange(pre.shape[0])[:, None]
    return pre, jnp.zeros_like(pre).at[rows, i].set(jnp.maximum(v, 0))

  def decode(self, m: int, codes: Sequence, x_TD):
    """y_hat_m [T, D] from the codes of every layer (list) and the input x_m."""
    y = jnp.asarray(self.b_dec[m])
    for j in range(m + 1):
      s = m - j
      if s < self.W_dec[j].shape[1]:
        y = y + codes[j] @ jnp.asarray(self.W_dec[j][:, s])
    if self.W_skip is not None:
      y = y + x_TD @ jnp.asarray(self.W_skip[m])
    return y


def coders_from_external(transcoders: Mapping[int, sae_io.ExternalSAE], *,
                         hook_in: str = "blocks.{layer}.mlp_in",
                         hook_out: str = "blocks.{layer}.mlp_out", scan: str = "") -> Coders:
  """Coders of a per-layer transcoder set {layer: ExternalSAE} (skip transcoders too)."""
  if not isinstance(transcoders, Mapping) or not transcoders:
    raise ConfigError("transcoders: expected a non-empty dict {layer index: ExternalSAE}")
  layers = sorted(int(l) for l in transcoders)
  arrays, acts, ks = [], set(), set()
  for l in layers:
    t = transcoders[l]
    if not isinstance(t, sae_io.ExternalSAE) or t.kind == "sae":
      raise ConfigError(f"transcoders[{l}]: expected an ExternalSAE transcoder, got "
                        f"{getattr(t, 'kind', type(t).__name__)!r}")
    sae_io.validate(t, f"transcoders[{l}]")
    if t.architecture not in _SAE_ACT:
      raise ConfigError(f"transcoders[{l}]: architecture {t.architecture!r}: expected one of "
                        f"{sorted(_SAE_ACT)}")
    acts.add(_SAE_ACT[t.architecture])
    ks.add(t.k)
    arrays.append(sae_io.external_raw_arrays(t))
  if len(acts) > 1 or len(ks) > 1:
    raise ConfigError(f"transcoders mix activations {sorted(acts)} / k {sorted(ks, key=str)}: "
                      "expected one activation (and k) for every layer")
  skips = [a.get("W_skip") for a in arrays]
  if any(s is None for s in skips) and not all(s is None for s in skips):
    raise ConfigError("transcoders: some layers have a skip connection and some do not: "
                      "expected all or none")
  act = acts.pop()
  return Coders(
      tuple(layers), hook_in, hook_out, tuple(a["W_enc"].T.copy() for a in arrays),
      tuple(a["b_enc"] for a in arrays), tuple(a["W_dec"][:, None, :] for a in arrays),
      np.stack([a["b_dec"] for a in arrays]), act,
      tuple(a["threshold"] for a in arrays) if act == "jumprelu" else None, ks.pop(),
      None if skips[0] is None else np.stack(skips), scan or "transcoders")


def coders_from_clt(clt, scan: str = "") -> Coders:
  """Coders of a cross-layer transcoder (transcoder_io.ExternalCLT)."""
  from jaxcode.models import transcoder_io
  transcoder_io.validate_clt(clt, "clt")
  f32 = lambda a: np.asarray(a, np.float32)
  return Coders(tuple(int(l) for l in clt.layers), clt.hook_in, clt.hook_out,
                tuple(f32(w) for w in clt.W_enc), tuple(f32(b) for b in clt.b_enc),
                tuple(f32(w) for w in clt.W_dec), f32(clt.b_dec), clt.activation,
                None if clt.threshold is None else tuple(f32(t) for t in clt.threshold),
                clt.k, None if clt.W_skip is None else f32(clt.W_skip),
                scan or clt.model_name or "clt")


def as_coders(obj, scan: str = "") -> Coders:
  """Coders from Coders, an ExternalCLT or a {layer: ExternalSAE} transcoder set."""
  from jaxcode.models import transcoder_io
  if isinstance(obj, Coders):
    return obj
  if isinstance(obj, transcoder_io.ExternalCLT):
    return coders_from_clt(obj, scan)
  if isinstance(obj, Mapping):
    return coders_from_external(obj, scan=scan)
  raise ConfigError(f"transcoders of type {type(obj).__name__}: expected an ExternalCLT or a "
                    "dict {layer: ExternalSAE}")


def check_coders(lm, coders: Coders) -> tuple[list, list]:
  """(hook_in names, hook_out names) per layer; ConfigError unless the coders cover every
  layer of this causal LM at hookpoints of width d_model, with matching array shapes."""
  if not getattr(lm, "has_logits", False) or lm.model_type == "bert":
    raise ConfigError(f"attribution: expected a causal LM with an LM head, got "
                      f"model_type={lm.model_type!r}")
  if tuple(coders.layers) != tuple(range(lm.n_layers)):
    raise ConfigError(f"transcoders cover layers {list(coders.layers)}: expected every layer "
                      f"0..{lm.n_layers - 1} of the model")
  if coders.activation not in ACTIVATIONS:
    raise ConfigError(f"activation {coders.activation!r}: expected one of {ACTIVATIONS}")
  rep = Replacement(coders.layers, coders.hook_in, coders.hook_out, (), None, None, True)
  ins, outs = hook_names(rep, lm.n_layers, "transcoders")
  D, L = lm.d_model, lm.n_layers
  for name in ins + outs:
    if lm.hookpoint_width(name) != D:
      raise ConfigError(f"transcoders read/write {name!r} of width {lm.hookpoint_width(name)}: "
                        f"expected a d_model={D} hookpoint")
  for j in range(L):
    F = coders.W_enc[j].shape[0]
    want = {"W_enc": (F, D), "b_enc": (F,), "W_dec": (F, coders.W_dec[j].shape[1], D)}
    for name, shape in want.items():
      got = tuple(np.shape(getattr(coders, name)[j]))
      if got != shape:
        raise ConfigError(f"transcoders {name}[{j}] of shape {got}: expected {shape} (the "
                          f"model's d_model is {D})")
    if not 1 <= coders.W_dec[j].shape[1] <= L - j:
      raise ConfigError(f"transcoders W_dec[{j}] has {coders.W_dec[j].shape[1]} output slots: "
                        f"expected 1..{L - j}")
  if np.shape(coders.b_dec) != (L, D) or (coders.W_skip is not None
                                         and np.shape(coders.W_skip) != (L, D, D)):
    raise ConfigError(f"transcoders b_dec {np.shape(coders.b_dec)} / W_skip "
                      f"{np.shape(coders.W_skip)}: expected ({L}, {D}) / ({L}, {D}, {D})")
  return ins, outs


# ---------------------------------------------------------------- prompts

def max_context(lm) -> int | None:
  """The longest input the model allows (learned positions or max_position_embeddings)."""
  n = getattr(lm.module, "n_ctx", None)
  if n:
    return int(n)
  cfg = getattr(lm.config, "text_config", None) or lm.config
  n = getattr(cfg, "max_position_embeddings", None)
  return int(n) if n else None


def check_ids(lm, ids) -> np.ndarray:
  """int32 [T] token ids, checked against the vocabulary and the context length."""
  ids = np.asarray(ids)
  if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
    raise ConfigError(f"prompt ids of shape {ids.shape} ({ids.dtype}): expected a non-empty 1-D "
                      "array of token ids")
  V = lm.module.vocab
  if ids.min() < 0 or ids.max() >= V:
    raise ConfigError(f"prompt ids in [{ids.min()}, {ids.max()}]: expected token ids in "
                      f"[0, {V - 1}]")
  ctx = max_context(lm)
  if ctx is not None and ids.size > ctx:
    raise ConfigError(f"prompt of {ids.size} tokens: the model's context is {ctx} tokens")
  return ids.astype(np.int32)


def prompt_ids(lm, prompt: str) -> np.ndarray:
  """Token ids of a prompt, BOS first when the tokenizer has one (circuit-tracer prepends it
  if missing); ConfigError for an empty prompt or one longer than the context."""
  if not isinstance(prompt, str) or not prompt.strip():
    raise ConfigError(f"prompt={prompt!r}: expected non-empty text")
  tok = getattr(lm, "tokenizer", None)
  if tok is None:
    raise ConfigError(f"the model in {lm.model_dir!r} has no tokenizer: pass token ids instead "
                      "of a prompt")
  ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
  bos = getattr(tok, "bos_token_id", None)
  if bos is not None and (not ids or ids[0] != bos):
    ids = [bos] + ids
  ctx = max_context(lm)
  if ctx is not None and len(ids) > ctx:
    raise ConfigError(f"prompt of {len(ids)} tokens: the model's context is {ctx} tokens")
  return check_ids(lm, ids)


def token_id(lm, token) -> int:
  """A vocabulary id from an int or a string that is exactly one token (ConfigError else)."""
  V = lm.module.vocab
  if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
    if not 0 <= int(token) < V:
      raise ConfigError(f"target token id {token}: expected an id in [0, {V - 1}]")
    return int(token)
  tok = getattr(lm, "tokenizer", None)
  if not isinstance(token, str) or tok is None:
    raise ConfigError(f"target token {token!r}: expected a token id or a string (with a "
                      "tokenizer)")
  got = tok.convert_tokens_to_ids(token)
  unk = getattr(tok, "unk_token_id", None)
  if got is None or (unk is not None and got == unk and token != tok.unk_token):
    ids = tok(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
      raise ConfigError(f"target token {token!r} is not in the vocabulary (it tokenizes to "
                        f"{len(ids)} tokens {ids}): expected exactly one token")
    got = ids[0]
  return int(got)


def decode_tokens(lm, ids) -> list[str]:
  tok = getattr(lm, "tokenizer", None)
  if tok is None:
    return [f"<{int(i)}>" for i in ids]
  return [tok.decode([int(i)]) for i in ids]


# ---------------------------------------------------------------- the local replacement model

def _clean_fn(module, n_layers, ins, outs):
  def fwd(params, ids_T):
    with freezing() as f:
      rec = module.apply({"params": params}, ids_T[None], jnp.ones((1, ids_T.shape[0]), jnp.int32),
                         n_layers, True)
    stack = lambda names: jnp.stack([rec[n][0].astype(jnp.float32) for n in names])
    return (list(f.values), stack(ins), stack(outs), rec["embed"][0].astype(jnp.float32),
            rec["final"][0].astype(jnp.float32), rec["logits"][0])
  return fwd


def _frozen_fn(module, n_layers, ins, outs):
  """fwd(params, freeze, ids, y_clean, x_clean, w_skip, u_emb [T,D], u_out [L,T,D]) ->
  (x_in [L,T,D], final [T,D], logits [T,V]) of the frozen forward (module docstring)."""
  def fwd(params, freeze, ids_T, y_clean, x_clean, w_skip, u_emb, u_out):
    xs = []

    def read(x):
      xs.append(x[0].astype(jnp.float32))
      return x

    def write(j):
      def edit(y):
        v = y_clean[j] + u_out[j]
        if w_skip is not None:
          v = v + (xs[j] - x_clean[j]) @ w_skip[j]
        return v[None].astype(y.dtype)
      return edit
    edits = {"embed": lambda x: x + u_emb[None].astype(x.dtype)}
    edits.update({n: read for n in ins})
    edits.update({n: write(j) for j, n in enumerate(outs)})
    with freezing(freeze):
      rec = module.apply({"params": params}, ids_T[None], jnp.ones((1, ids_T.shape[0]), jnp.int32),
                         n_layers, True, edits=edits)
    return jnp.stack(xs), rec["final"][0].astype(jnp.float32), rec["logits"][0]
  return fwd


def _cached(lm, key, make):
  fns = lm._fns
  if key not in fns:
    fns[key] = make()
  return fns[key]


@dataclasses.dataclass
class LocalReplacement:
  """One prompt's local replacement model (module docstring). Arrays are float32 jax arrays:
  x_in, y_out, recon, error [L, T, D]; embed, final [T, D]; logits [T, V]; pre, codes: per
  layer [T, F_j]; zero_pos [T] bool (positions with no feature or error nodes)."""
  lm: Any
  coders: Coders
  ins: list
  outs: list
  ids: np.ndarray
  freeze: list
  x_in: Any
  y_out: Any
  embed: Any
  final: Any
  logits: Any
  pre: list
  codes: list
  recon: Any
  error: Any
  zero_pos: np.ndarray

  @property
  def w_skip(self):
    return None if self.coders.W_skip is None else jnp.asarray(self.coders.W_skip)

  def run(self, u_emb=None, u_out=None):
    """(x_in, final, logits) of the frozen model with these injections (None: zero)."""
    L, T, D = self.y_out.shape
    u_emb = jnp.zeros((T, D)) if u_emb is None else jnp.asarray(u_emb, jnp.float32)
    u_out = jnp.zeros((L, T, D)) if u_out is None else jnp.asarray(u_out, jnp.float32)
    fn = _cached(self.lm, ("attr_frozen", tuple(self.ins), tuple(self.outs)),
                 lambda: jax.jit(_frozen_fn(self.lm.module, self.lm.n_layers, self.ins, self.outs)))
    return fn(self.lm.params, self.freeze, jnp.asarray(self.ids), self.y_out, self.x_in,
              self.w_skip, u_emb, u_out)

  def feature_vectors(self, j: int, c: int, i: int, value: float):
    """u_out [L, T, D] injecting `value` times feature (j, i)'s decoder rows at position c."""
    L, T, D = self.y_out.shape
    w = np.asarray(self.coders.W_dec[j][i], np.float32)        # [S_j, D]
    u = np.zeros((L, T, D), np.float32)
    u[j:j + w.shape[0], c] = value * w
    return u


def local_replacement(lm, transcoders, ids, zero_positions=(0,)) -> LocalReplacement:
  """The clean forward of `ids` [T] (checked), its freeze record, codes, reconstructions
  and errors."""
  coders = as_coders(transcoders)
  ins, outs = check_coders(lm, coders)
  ids = check_ids(lm, ids)
  zero = np.zeros(ids.size, bool)
  for p in zero_positions:
    if not isinstance(p, (int, np.integer)) or not -ids.size <= p < ids.size:
      raise ConfigError(f"zero_positions entry {p!r}: expected a position in [0, {ids.size})")
    zero[p] = True
  fn = _cached(lm, ("attr_clean", tuple(ins), tuple(outs)),
               lambda: jax.jit(_clean_fn(lm.module, lm.n_layers, ins, outs)))
  freeze, x_in, y_out, emb, final, logits = fn(lm.params, jnp.asarray(ids))
  pre, codes = zip(*(coders.encode(j, x_in[j]) for j in range(coders.n_layers)))
  recon = jnp.stack([coders.decode(m, codes, x_in[m]) for m in range(coders.n_layers)])
  return LocalReplacement(lm, coders, ins, outs, ids, freeze, x_in, y_out, emb, final, logits,
                          list(pre), list(codes), recon, y_out - recon, zero)


# ---------------------------------------------------------------- targets and sources

def logit_directions(lm, tokens) -> jax.Array:
  """[n, D]: d(logit_v - mean logit)/d final for each token v, pre soft-cap (the head is
  linear in `final`; obtained by a vector-Jacobian product, so tied and untied heads alike)."""
  module = lm.module
  if getattr(module, "final_softcap", None) is not None:
    module = module.clone(final_softcap=None)
  V, D = module.vocab, lm.d_model
  one = jnp.zeros((1, 1), jnp.int32)

  def head(z_D):
    rec = module.apply({"params": lm.params}, one, jnp.ones((1, 1), jnp.int32), 0, True,
                       edits={"final": lambda x: z_D[None, None].astype(x.dtype)})
    return rec["logits"][0, 0]
  _, vjp = jax.vjp(head, jnp.zeros((D,), jnp.float32))
  cot = jax.nn.one_hot(jnp.asarray(tokens), V) - 1.0 / V
  return jax.jit(jax.vmap(lambda c: vjp(c)[0]))(cot)


def logit_targets(lm, logits_V, max_n_logits: int, desired_logit_prob: float,
                  extra=()) -> tuple[np.ndarray, np.ndarray]:
  """(token ids, probabilities) of the logit nodes: the extra tokens, then the most probable
  until their mass reaches desired_logit_prob or max_n_logits tokens are chosen."""
  p = np.asarray(jax.nn.softmax(jnp.asarray(logits_V, jnp.float32)), np.float64)
  order = np.argsort(-p, kind="stable")
  n = int(np.searchsorted(np.cumsum(p[order]), desired_logit_prob) + 1)
  chosen = list(dict.fromkeys([int(t) for t in extra] + [int(t) for t in order[:n]]))
  chosen = chosen[:max(max_n_logits, len(extra))]
  return np.asarray(chosen, np.int64), p[chosen].astype(np.float32)


@dataclasses.dataclass
class Sources:
  """Every candidate source of one prompt: active features (layer j, position, index,
  activation) in (j, pos, index) order, their slots in the grouped decoder array
  dec [L, T, N, S, D] (row a * W_dec[j][i, s] at [j, pos, n, s]), errors [L, T, D] (zero at
  zeroed positions) and token vectors [T, D]."""
  features: np.ndarray
  activations: np.ndarray
  slots: np.ndarray
  dec: np.ndarray
  err: np.ndarray
  emb: np.ndarray


def sources(local: LocalReplacement) -> Sources:
  L, T, D = local.y_out.shape
  S = local.coders.n_slots
  feats, acts = [], []
  for j, c in enumerate(local.codes):
    a = np.asarray(c) * ~local.zero_pos[:, None]
    pos, idx = np.nonzero(a)
    feats.append(np.stack([np.full(pos.size, j), pos, idx], 1))
    acts.append(a[pos, idx])
  feats = np.concatenate(feats).astype(np.int64)
  acts = np.concatenate(acts).astype(np.float32)
  counts = np.zeros((L, T), np.int64)
  slots = np.zeros(len(feats), np.int64)
  for n, (j, c, _) in enumerate(feats):
    slots[n] = counts[j, c]
    counts[j, c] += 1
  N = max(1, int(counts.max(initial=0)))
  dec = np.zeros((L, T, N, S, D), np.float32)
  for n, (j, c, i) in enumerate(feats):
    w = np.asarray(local.coders.W_dec[j][i], np.float32)
    dec[j, c, slots[n], :w.shape[0]] = acts[n] * w
  flat = (feats[:, 0] * T + feats[:, 1]) * N + slots
  err = np.asarray(local.error) * ~local.zero_pos[None, :, None]
  return Sources(feats, acts, flat, dec, err.astype(np.float32),
                 np.asarray(local.embed, np.float32))


def _rows_fn(fwd, L: int, S: int):
  """jit-able rows(params, freeze, ids, y_clean, x_clean, w_skip, layer [B], pos [B],
  vec [B, D], emb, err, dec) -> (feature [B, L*T*N], error [B, L*T], token [B, T]) edges.
  Target b reads x_in[layer_b, pos_b] . vec_b, or final[pos_b] . vec_b when layer_b == L."""
  def rows(params, freeze, ids, y_clean, x_clean, w_skip, layer, pos, vec, emb, err, dec):
    T, D = emb.shape

    def f(ue, uo):
      return fwd(params, freeze, ids, y_clean, x_clean, w_skip, ue, uo)[:2]
    _, vjp = jax.vjp(f, jnp.zeros_like(emb), jnp.zeros_like(y_clean))

    def one(l, c, v):
      logit = l == L
      cx = jnp.zeros((L, T, D)).at[jnp.minimum(l, L - 1), c].set(jnp.where(logit, 0.0, v))
      cf = jnp.zeros((T, D)).at[c].set(jnp.where(logit, v, 0.0))
      return vjp((cx, cf))
    g_e, g_o = jax.vmap(one)(layer, pos, vec)
    B = vec.shape[0]
    tok = jnp.einsum("btd,td->bt", g_e, emb)
    er = jnp.einsum("bltd,ltd->blt", g_o, err).reshape(B, -1)
    feat = jnp.zeros((B,) + dec.shape[:3])
    for s in range(S):
      part = jnp.einsum("bltd,ltnd->bltn", g_o[:, s:], dec[:L - s, :, :, s])
      feat = feat.at[:, :L - s].add(part)
    return feat.reshape(B, -1), er, tok
  return rows


# ---------------------------------------------------------------- rows in batches

class _RowEngine:
  """Computes edge rows [n_targets, n_sources] for batches of targets (padded to batch_size;
  the batch axis on the mesh's data axis when a mesh with more than one data shard is given)."""

  def __init__(self, local: LocalReplacement, src: Sources, batch_size: int, mesh=None):
    lm = local.lm
    L, T, D = local.y_out.shape
    self.L, self.T, self.B = L, T, int(batch_size)
    key = ("attr_rows", tuple(local.ins), tuple(local.outs), local.coders.n_slots)
    fwd = _frozen_fn(lm.module, lm.n_layers, local.ins, local.outs)
    self.fn = _cached(lm, key, lambda: jax.jit(_rows_fn(fwd, L, local.coders.n_slots)))
    self.args = (lm.params, local.freeze, jnp.asarray(local.ids), local.y_out, local.x_in,
                 local.w_skip)
    self.src = (jnp.asarray(src.emb), jnp.asarray(src.err), jnp.asarray(src.dec))
    self.slots = src.slots
    self.sharding = None
    if mesh is not None and mesh.shape.get(parallel.DATA, 1) > 1:
      n = mesh.shape[parallel.DATA]
      self.B = -(-self.B // n) * n
      self.sharding = NamedSharding(mesh, P(parallel.DATA))
    self.n_vjp = 0
    self.seconds = 0.0

  def __call__(self, layer, pos, vec) -> np.ndarray:
    """[n, n_features + L*T + T] rows for n targets (any n)."""
    out = []
    for b0 in range(0, len(layer), self.B):
      t = slice(b0, b0 + self.B)
      parts = [np.asarray(layer[t]), np.asarray(pos[t]), np.asarray(vec[t], np.float32)]
      n = parts[0].shape[0]
      pad = self.B - n
      parts[0] = np.concatenate([parts[0], np.full(pad, self.L)]).astype(np.int32)
      parts[1] = np.concatenate([parts[1], np.zeros(pad)]).astype(np.int32)
      parts[2] = np.concatenate([parts[2], np.zeros((pad, parts[2].shape[1]), np.float32)])
      if self.sharding is not None:
        parts = [jax.device_put(p, self.sharding) for p in parts]
      t0 = time.perf_counter()
      feat, er, tok = jax.device_get(self.fn(*self.args, *parts, *self.src))
      self.seconds += time.perf_counter() - t0
      self.n_vjp += n
      out.append(np.concatenate([feat[:n][:, self.slots], er[:n], tok[:n]], 1))
    width = len(self.slots) + self.L * self.T + self.T
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def _influence(rows: np.ndarray, row_feature: np.ndarray, weights: np.ndarray,
               n_features: int, n_iter: int = 64) -> np.ndarray:
  """Estimated influence of every active feature on the logits from the rows computed so far:
  rows normalised by their absolute sums, influence pushed from the logit rows (weights)
  through the computed feature rows (row_feature[r] = the row's feature, -1 for logits)."""
  a = np.abs(rows[:, :n_features])
  a = a / np.maximum(np.abs(rows).sum(1, keepdims=True), 1e-10)
  infl = np.zeros(n_features)
  logit_rows = row_feature < 0
  for _ in range(n_iter):
    w = np.where(logit_rows, weights, infl[np.maximum(row_feature, 0)])
    new = w @ a
    if np.allclose(new, infl, rtol=0, atol=1e-12):
      break
    infl = new
  return infl


def _compute_rows(engine: _RowEngine, local, src: Sources, logit_tok, logit_prob, dirs,
                  max_feature_nodes: int | None, progress=None):
  """(rows [n_rows, n_sources], selected feature indices) : logit rows first, then features
  in order of estimated influence (all of them when max_feature_nodes is None or enough)."""
  L, T = engine.L, engine.T
  last = T - 1
  rows = engine(np.full(len(logit_tok), L), np.full(len(logit_tok), last), np.asarray(dirs))
  n_f = len(src.features)
  cap = n_f if max_feature_nodes is None else min(int(max_feature_nodes), n_f)
  enc = [np.asarray(w, np.float32) for w in local.coders.W_enc]
  chosen: list[int] = []
  row_feature = np.full(len(logit_tok), -1)
  while len(chosen) < cap:
    if cap == n_f:
      batch = np.arange(len(chosen), min(n_f, len(chosen) + 4 * engine.B))
    else:
      infl = _influence(rows, row_feature, logit_prob.astype(np.float64), n_f)
      infl[chosen] = -np.inf
      batch = np.argsort(-infl, kind="stable")[:min(engine.B, cap - len(chosen))]
    f = src.features[batch]
    vec = np.stack([enc[j][i] for j, _, i in f]) if len(f) else np.zeros((0, local.lm.d_model))
    rows = np.concatenate([rows, engine(f[:, 0], f[:, 1], vec)])
    row_feature = np.concatenate([row_feature, batch])
    chosen += [int(b) for b in batch]
    if progress is not None:
      progress(len(chosen), cap)
  return rows, np.asarray(chosen, np.int64)


# ---------------------------------------------------------------- the graph

def _check_settings(max_n_logits, desired_logit_prob, batch_size, max_feature_nodes):
  def pos_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
  if not pos_int(max_n_logits):
    raise ConfigError(f"max_n_logits={max_n_logits!r}: expected a positive integer")
  if isinstance(desired_logit_prob, bool) or not isinstance(desired_logit_prob, (int, float)) \
      or not 0 < desired_logit_prob <= 1:
    raise ConfigError(f"desired_logit_prob={desired_logit_prob!r}: expected a number in (0, 1]")
  if not pos_int(batch_size):
    raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer")
  if max_feature_nodes is not None and not (pos_int(max_feature_nodes) or max_feature_nodes == 0):
    raise ConfigError(f"max_feature_nodes={max_feature_nodes!r}: expected None or an integer "
                      ">= 0")


def assemble(rows, chosen, src: Sources, n_logits: int, L: int, T: int) -> tuple:
  """(adjacency [n, n], selected features, their activations): rows of the logits (first
  n_logits rows) and of the chosen features, columns restricted to the chosen features."""
  sel = np.sort(chosen)
  n_sel, n_f = len(sel), len(src.features)
  n = n_sel + L * T + T + n_logits
  node_of = np.full(n_f, -1)
  node_of[sel] = np.arange(n_sel)
  cols = np.concatenate([rows[:, sel], rows[:, n_f:]], 1)
  A = np.zeros((n, n), np.float32)
  A[n - n_logits:, :n_sel + L * T + T] = cols[:n_logits]
  A[node_of[chosen], :n_sel + L * T + T] = cols[n_logits:]
  return A, src.features[sel], src.activations[sel]


def attribute(lm, transcoders, prompt: str | None = None, *, ids=None, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, batch_size: int = 64,
              max_feature_nodes: int | None = None, target_tokens: Sequence = (),
              zero_positions=(0,), mesh=None, scan: str = "", progress=None):
  """The attribution graph (circuit_graph.Graph) of `prompt` (or token `ids`) under the
  transcoders (Coders, ExternalCLT or {layer: ExternalSAE}); target_tokens (ids or
  single-token strings) are logit nodes whatever their probability. Every input is checked
  before any compute."""
  _check_settings(max_n_logits, desired_logit_prob, batch_size, max_feature_nodes)
  coders = as_coders(transcoders, scan)
  check_coders(lm, coders)
  if (prompt is None) == (ids is None):
    raise ConfigError("attribute: expected exactly one of prompt and ids")
  ids = prompt_ids(lm, prompt) if prompt is not None else check_ids(lm, ids)
  if ids.size < 2:
    raise ConfigError(f"prompt of {ids.size} token(s): expected at least one token after BOS")
  extra = [token_id(lm, t) for t in target_tokens]
  t0 = time.perf_counter()
  local = local_replacement(lm, coders, ids, zero_positions)
  src = sources(local)
  logit_tok, logit_prob = logit_targets(lm, local.logits[-1], max_n_logits, desired_logit_prob,
                                        extra)
  dirs = logit_directions(lm, logit_tok)
  t_setup = time.perf_counter() - t0
  engine = _RowEngine(local, src, batch_size, mesh)
  rows, chosen = _compute_rows(engine, local, src, logit_tok, logit_prob, dirs,
                               max_feature_nodes, progress)
  L, T = local.y_out.shape[:2]
  A, feats, acts = assemble(rows, chosen, src, len(logit_tok), L, T)
  meta = {"n_active_features": int(len(src.features)), "n_selected_features": int(len(feats)),
          "n_vjp": engine.n_vjp, "seconds_setup": t_setup, "seconds_rows": engine.seconds,
          "seconds_total": time.perf_counter() - t0, "batch_size": engine.B,
          "max_n_logits": int(max_n_logits), "desired_logit_prob": float(desired_logit_prob),
          "max_feature_nodes": max_feature_nodes, "zero_positions": [int(p) for p in
                                                                    np.nonzero(local.zero_pos)[0]],
          "hook_in": coders.hook_in, "hook_out": coders.hook_out, "activation": coders.activation,
          "n_slots": coders.n_slots, "skip": coders.W_skip is not None}
  return circuit_graph.Graph(
      adjacency=A, features=feats, activations=acts, layers=tuple(coders.layers),
      input_tokens=ids.astype(np.int64), token_strings=decode_tokens(lm, ids),
      logit_tokens=logit_tok, logit_probs=logit_prob,
      logit_strings=decode_tokens(lm, logit_tok),
      prompt=prompt if prompt is not None else "".join(decode_tokens(lm, ids)),
      scan=coders.scan, metadata=meta)


# ---------------------------------------------------------------- paths

def _topological(graph) -> np.ndarray:
  """Node order in which every edge runs forward: tokens, then per layer its features and
  errors, then the logits."""
  L, T = len(graph.layers), len(graph.input_tokens)
  err_layer = np.repeat(np.arange(L), T)
  layer = np.concatenate([graph.features[:, 0], err_layer, np.full(T, -1),
                          np.full(len(graph.logit_tokens), L)])
  return np.argsort(layer, kind="stable")


def top_paths(graph, k: int = 5, target: int | None = None, adjacency=None,
              errors: bool = True) -> list[tuple]:
  """The k paths into a logit node (default: the most probable logit) with the largest
  product of normalised edge weights |A[t, s]| / sum_s' |A[t, s']| (the share of each node's
  input its predecessor on the path accounts for), each from a node with no inputs (a token
  or an error) : [(score, [node indices from source to logit]), ...]. errors=False: paths that
  start at a token (error nodes still count in each node's input total)."""
  A = np.abs(np.asarray(graph.adjacency if adjacency is None else adjacency, np.float64))
  A = A / np.maximum(A.sum(1, keepdims=True), 1e-30)
  if not errors:
    n_f, LT = len(graph.features), len(graph.layers) * len(graph.input_tokens)
    A[:, n_f:n_f + LT] = 0.0
  n = A.shape[0]
  n_log = len(graph.logit_tokens)
  target = n - n_log if target is None else n - n_log + int(target)
  best = np.zeros((n, k))           # best[v, r]: score of v's r-th best path from a leaf
  back = np.full((n, k, 2), -1)     # (predecessor, its rank)
  for v in _topological(graph):
    inputs = np.nonzero(A[v])[0]
    if inputs.size == 0:
      best[v, 0] = 1.0
      continue
    cand = (A[v, inputs][:, None] * best[inputs]).ravel()
    top = np.argsort(-cand, kind="stable")[:k]
    best[v, :top.size] = cand[top]
    back[v, :top.size, 0] = inputs[top // k]
    back[v, :top.size, 1] = top % k
  paths = []
  for r in range(k):
    if best[target, r] <= 0:
      break
    path, (v, rank) = [target], (target, r)
    while back[v, rank, 0] >= 0:
      v, rank = back[v, rank]
      path.append(int(v))
    paths.append((float(best[target, r]), path[::-1]))
  return paths


def node_label(graph, i: int) -> str:
  """A short description of node i: 'feature 12 (L3, pos 4)', 'error (L3, pos 4)',
  "token ' Paris' (pos 4)", "logit ' Paris' (p=0.41)"."""
  n_f, L, T = len(graph.features), len(graph.layers), len(graph.input_tokens)
  if i < n_f:
    j, p, f = graph.features[i]
    return f"feature {f} (L{graph.layers[j]}, pos {p}, act {graph.activations[i]:.3g})"
  if i < n_f + L * T:
    j, p = divmod(i - n_f, T)
    return f"error (L{graph.layers[j]}, pos {p})"
  if i < n_f + L * T + T:
    p = i - n_f - L * T
    return f"token {graph.token_strings[p]!r} (pos {p})"
  q = i - n_f - L * T - T
  return f"logit {graph.logit_strings[q]!r} (p={graph.logit_probs[q]:.3g})"
