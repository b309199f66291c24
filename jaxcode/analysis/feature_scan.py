"""Streaming feature scan: the per-latent statistics behind the feature dashboards (evals notes
4.1-4.2), in two passes over a token stream with memory independent of its length.

Input: `batches[i]` -> {"x": [N, D] activations, "row": [N] int32 packed-corpus row, "pos": [N]
int32 position in that row, "valid": [N] bool}, and `encode(x_ND) -> codes_NF` (an SAE's, a
transcoder's or one CLT layer's encoder, F = n_latents). Latent f fires on token n when the
token is valid and a = codes[n, f] > 1e-6 (SAEDashboard's frac_nonzero threshold); invalid
tokens (padding, BOS, special) are never counted and never sampled.

Pass 1, per latent (merged batch by batch inside one jitted update):
* top-k: the k largest firing (value, row, pos). The batch's top-k per latent (lax.top_k over
  the token axis) is concatenated with the kept k and cut back to k by a second lax.top_k, so
  the kept set is exactly the top-k of all tokens seen (top-k of a union = top-k of the union
  of the parts' top-k). Ties go to the earlier slot (earlier batch, lower token index).
* count, the sum of firing activations (Neumaier-compensated float32 across batches), max, and
  the histogram of log10(a) over the firing tokens: n_bins equal bins on [log10_min, log10_max];
  bin b holds edges[b] <= log10(a) < edges[b+1] (the last bin closed), values below 10^log10_min
  go to the first bin and values above 10^log10_max to the last (as np.histogram of the clipped
  logs).
* co-activation C[i, j] = #tokens where i and j both fire = (B^T B)[i, j] with B the binary
  firing matrix [N, F]: a bfloat16 matmul accumulated in float32 per batch (exact while N <
  2^24), added to an int32 state. Kept only for F <= 4096 (the dense [F, F] counts); the top
  partners need the full counts, so for F > 4096 no co-activation is computed and the result's
  coact_top_index / coact_top_count are None (dashboards then show decoder-cosine neighbours).
  Partners: the coact_top largest C[i, j], j != i, ties to the lower j, C > 0 only.
* the number of valid tokens.

Pass 2 (SAE-vis intervals): edges_f = linspace(0, max_f, n_intervals + 1) (float64 on the host,
stored as float32); interval j of latent f holds the firing a with edges[j] < a <= edges[j+1],
the lowest interval starting just above 0 (a > 1e-6), the highest ending at max_f. For each
(latent, interval) the scan counts the tokens and keeps `per_interval` uniform samples without
replacement by reservoir sampling as "keep the smallest random keys": every (latent, token)
of batch i gets a key u ~ U[0, 1), u_FN = jax.random.uniform(fold_in(key(seed), i), [F, N]),
and the kept set is the per_interval smallest keys seen, merged like the top-k. The kept set is
therefore a uniform random subset of the interval's tokens (all of them when they are fewer
than per_interval), and a pure function of the batches and the seed (threefry is partitionable,
jax's default, so it does not depend on the mesh either).

Codes are computed by one jitted encoder shared by both passes, so the values pass 2 compares
with pass 1's max are bit for bit those pass 1 saw. With a mesh, each batch's N axis is split
over the mesh's `data` axis and the state is replicated; XLA partitions the top-k, sums and
matmul, and the result equals the single-device one (up to float rounding of the sums).

Resumption: with `state_path`, the state (numpy arrays, one .npz written to a temporary name then
renamed) with the pass and the next batch index is saved every `save_seconds`, at the pass
boundary, when the run stops or fails, and at the end, where the file holds the final result and
a rerun returns it without computing. A state from other settings, n_latents, number of batches
or batch size is refused. Counters are int32 on the device: the scan refuses streams of 2^31
tokens or more.

Result (numpy; F latents, k = k_top, n = n_intervals, p = per_interval, b = n_bins, c =
coact_top): n_tokens, n_latents, k_top, n_intervals, per_interval, n_bins (ints); top_values
[F, k] float32 descending, top_rows / top_pos [F, k] int32 (unused slots: 0, -1, -1); count [F]
int64; density [F] float64 = count / n_tokens; max [F] float32 (0 if dead); mean_active [F]
float64 (mean over firing tokens, 0 if none); hist_edges [b+1] float64 (log10); hist_counts
[F, b] int64; interval_edges [F, n+1] float32; interval_counts [F, n] int64; interval_values
[F, n, p] float32 and interval_rows / interval_pos [F, n, p] int32 (unused: 0, -1, -1; samples
in increasing order of their random key). Intervals are ordered LOWEST TO HIGHEST (index 0 is
the lowest; dashboards show them highest first). coact_top_index [F, c] int32 (-1 unused),
coact_top_count [F, c] int64, or both None when F > 4096.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcode import errors
from jaxcode.errors import ConfigError

FIRE = 1e-6                 # a > FIRE on a valid token counts as firing
DENSE_COACT_MAX = 4096      # dense [F, F] co-activation counts up to this many latents
MAX_TOKENS = 2**31 - 1      # int32 counters on the device
MAX_BATCH = 2**24           # float32 per-batch co-activation sums stay exact below this
_VERSION = 1
_KEYS = ("x", "row", "pos", "valid")
_INT_KEYS = ("n_tokens", "n_latents", "k_top", "n_intervals", "per_interval", "n_bins")


@dataclasses.dataclass(frozen=True)
class ScanSettings:
  k_top: int = 20            # top activating token positions kept per latent
  n_intervals: int = 5       # activation intervals (0, max] split evenly
  per_interval: int = 5      # uniform reservoir samples kept per latent and interval
  n_bins: int = 50           # histogram bins of log10(activation) over [log10_min, log10_max]
  log10_min: float = -4.0
  log10_max: float = 4.0
  coact_top: int = 10        # nearest latents by co-activation kept per latent
  seed: int = 0


# ---------------------------------------------------------------- validation

def _check_settings(s, n_latents) -> None:
  if not isinstance(s, ScanSettings):
    raise ConfigError(f"settings={s!r}: expected a feature_scan.ScanSettings")
  errors.positive_int("n_latents", n_latents)
  for name in ("k_top", "n_intervals", "per_interval", "n_bins", "coact_top"):
    errors.positive_int(f"settings.{name}", getattr(s, name))
  errors.positive_int("settings.seed", s.seed, low=0)
  lo = errors.finite("settings.log10_min", s.log10_min)
  hi = errors.finite("settings.log10_max", s.log10_max)
  if lo >= hi:
    raise ConfigError(f"settings.log10_min={lo:g} >= settings.log10_max={hi:g}: expected "
                      "log10_min < log10_max")


def _check_batch(b, i: int, n_tok: int | None) -> int:
  """N of batch i, checking its keys and shapes (and N == n_tok when given)."""
  if not isinstance(b, dict) or any(k not in b for k in _KEYS):
    got = sorted(b) if isinstance(b, dict) else type(b).__name__
    raise ConfigError(f"batches[{i}] is {got}: expected a dict with keys {list(_KEYS)}")
  shapes = {k: tuple(np.shape(b[k])) for k in _KEYS}
  n = shapes["x"][0] if len(shapes["x"]) == 2 else -1
  if n < 0 or any(shapes[k] != (n,) for k in _KEYS[1:]) or n_tok not in (None, n):
    want = "N" if n_tok is None else n_tok
    raise ConfigError(f"batches[{i}] shapes {shapes}: expected x [{want}, D] and row, pos, "
                      f"valid [{want}] (the same N in every batch)")
  return n


def _check_batches(batches, encode, n_latents: int, mesh) -> tuple[int, int]:
  """(number of batches, tokens per batch), or a ConfigError before any compute."""
  try:
    n = len(batches)
  except TypeError:
    raise ConfigError(f"batches={type(batches).__name__}: expected a sequence with len() and "
                      "batches[i]") from None
  if n == 0:
    raise ConfigError("batches is empty: expected at least one batch")
  b = batches[0]
  n_tok = _check_batch(b, 0, None)
  x = jax.ShapeDtypeStruct(tuple(np.shape(b["x"])), np.asarray(b["x"]).dtype)
  try:
    out = jax.eval_shape(encode, x)
  except Exception as e:  # noqa: BLE001 - any failure of the user's encoder is bad input
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"encode failed on batches[0]['x'] {x.shape}: {msg}") from None
  if tuple(getattr(out, "shape", ())) != (n_tok, n_latents):
    raise ConfigError(f"encode(x {x.shape}) has shape {tuple(getattr(out, 'shape', ()))}: "
                      f"expected ({n_tok}, n_latents={n_latents})")
  data = 1 if mesh is None else int(mesh.shape["data"])
  if n_tok % data:
    raise ConfigError(f"batch size N={n_tok}: expected a multiple of the mesh's data axis {data}")
  if n_tok >= MAX_BATCH or n * n_tok > MAX_TOKENS:
    raise ConfigError(f"{n} batches of {n_tok} tokens: expected N < 2^24 and fewer than 2^31 "
                      "tokens in one scan (int32 counters); split the scan")
  return n, n_tok


# ---------------------------------------------------------------- pass 1

def _init1(F: int, s: ScanSettings, dense: bool) -> dict:
  st = {"top_v": np.full((F, s.k_top), -np.inf, np.float32),
        "top_r": np.full((F, s.k_top), -1, np.int32), "top_p": np.full((F, s.k_top), -1, np.int32),
        "count": np.zeros(F, np.int32), "sum": np.zeros(F, np.float32),
        "sum_c": np.zeros(F, np.float32), "max": np.zeros(F, np.float32),
        "hist": np.zeros((F, s.n_bins), np.int32), "n_tokens": np.zeros((), np.int32)}
  if dense:
    st["coact"] = np.zeros((F, F), np.int32)
  return st


def _merge_top(st: dict, cand_NF, row_N, pos_N, k: int) -> dict:
  """The k largest of the kept (top_v, top_r, top_p) and this batch's candidates (-inf: none)."""
  v_Fk, i_Fk = lax.top_k(cand_NF.T, min(k, cand_NF.shape[0]))
  live = v_Fk > -jnp.inf
  v = jnp.concatenate([st["top_v"], v_Fk], 1)
  r = jnp.concatenate([st["top_r"], jnp.where(live, row_N[i_Fk], -1)], 1)
  p = jnp.concatenate([st["top_p"], jnp.where(live, pos_N[i_Fk], -1)], 1)
  top_v, j = lax.top_k(v, k)
  return {"top_v": top_v, "top_r": jnp.take_along_axis(r, j, 1),
          "top_p": jnp.take_along_axis(p, j, 1)}


def _histogram(a_NF, fire_NF, s: ScanSettings):
  """[F, n_bins] counts of log10(a) of the firing entries (clipped into the end bins)."""
  N, F = a_NF.shape
  if s.n_bins == 1:
    b_NF = jnp.zeros((N, F), jnp.int32)
  else:
    inner = jnp.asarray(np.linspace(s.log10_min, s.log10_max, s.n_bins + 1)[1:-1], jnp.float32)
    la_NF = jnp.log10(jnp.where(fire_NF, a_NF, 1.0))
    b_NF = jnp.searchsorted(inner, la_NF, side="right").astype(jnp.int32)
  f_NF = jnp.broadcast_to(jnp.arange(F, dtype=jnp.int32), (N, F))
  return jnp.zeros((F, s.n_bins), jnp.int32).at[f_NF, b_NF].add(fire_NF.astype(jnp.int32))


def _neumaier(s, c, x):
  """Compensated running sum: (s, c) + x, with s + c the sum to float32 rounding of each x."""
  t = s + x
  return t, c + jnp.where(jnp.abs(s) >= jnp.abs(x), (s - t) + x, (x - t) + s)


def _pass1(s: ScanSettings, dense: bool, st: dict, codes_NF, row_N, pos_N, valid_N) -> dict:
  fire_NF = valid_N[:, None] & (codes_NF > FIRE)
  a_NF = jnp.where(fire_NF, codes_NF, 0.0)
  out = dict(st)
  out.update(_merge_top(st, jnp.where(fire_NF, codes_NF, -jnp.inf), row_N, pos_N, s.k_top))
  out["count"] = st["count"] + fire_NF.sum(0, dtype=jnp.int32)
  out["sum"], out["sum_c"] = _neumaier(st["sum"], st["sum_c"], a_NF.sum(0))
  out["max"] = jnp.maximum(st["max"], a_NF.max(0))
  out["hist"] = st["hist"] + _histogram(a_NF, fire_NF, s)
  out["n_tokens"] = st["n_tokens"] + valid_N.sum(dtype=jnp.int32)
  if dense:
    b_NF = fire_NF.astype(jnp.bfloat16)       # 0/1 exact; float32 sums exact below 2^24
    c_FF = jnp.dot(b_NF.T, b_NF, preferred_element_type=jnp.float32)
    out["coact"] = st["coact"] + c_FF.astype(jnp.int32)
  return out


# ---------------------------------------------------------------- pass 2

def _init2(max_F: np.ndarray, s: ScanSettings) -> dict:
  """Pass-2 state; edges linspace(0, max, n+1) per latent (float64, stored float32)."""
  F, n, p = len(max_F), s.n_intervals, s.per_interval
  edges = np.linspace(0.0, np.asarray(max_F, np.float64), n + 1, axis=-1).astype(np.float32)
  return {"edges": edges, "key": np.full((F, n, p), -np.inf, np.float32),
          "val": np.zeros((F, n, p), np.float32), "row": np.full((F, n, p), -1, np.int32),
          "pos": np.full((F, n, p), -1, np.int32), "icount": np.zeros((F, n), np.int32)}


def _interval_samples(in_FN, negu_FN, codes_FN, row_N, pos_N, p: int):
  """Per latent the p smallest keys u among the tokens of in_FN: (-u, value, row, pos) [F, p]."""
  negk_Fp, i_Fp = lax.top_k(jnp.where(in_FN, negu_FN, -jnp.inf), min(p, in_FN.shape[1]))
  live = negk_Fp > -jnp.inf
  val = jnp.take_along_axis(codes_FN, i_Fp, 1)
  return (negk_Fp, jnp.where(live, val, 0.0), jnp.where(live, row_N[i_Fp], -1),
          jnp.where(live, pos_N[i_Fp], -1))


def _pass2(s: ScanSettings, st: dict, codes_NF, row_N, pos_N, valid_N, index) -> dict:
  codes_FN = codes_NF.T                                     # latent-major: top_k on the last axis
  fire_FN = valid_N[None, :] & (codes_FN > FIRE)
  e_Fn1 = st["edges"]
  j_FN = jnp.zeros(codes_FN.shape, jnp.int32)
  for m in range(1, s.n_intervals):
    j_FN = j_FN + (codes_FN > e_Fn1[:, m, None]).astype(jnp.int32)
  key = jax.random.fold_in(jax.random.key(s.seed), index)
  negu_FN = -jax.random.uniform(key, codes_FN.shape, jnp.float32)
  parts, counts = [], []
  for j in range(s.n_intervals):
    in_FN = fire_FN & (j_FN == j)
    counts.append(in_FN.sum(1, dtype=jnp.int32))
    parts.append(_interval_samples(in_FN, negu_FN, codes_FN, row_N, pos_N, s.per_interval))
  new = [jnp.stack(x, 1) for x in zip(*parts)]               # 4 x [F, n, p']
  names = ("key", "val", "row", "pos")
  cat = [jnp.concatenate([st[k], x], 2) for k, x in zip(names, new)]
  top, sel = lax.top_k(cat[0], s.per_interval)
  out = {"edges": e_Fn1, "key": top, "icount": st["icount"] + jnp.stack(counts, 1)}
  for k, x in zip(names[1:], cat[1:]):
    out[k] = jnp.take_along_axis(x, sel, 2)
  return out


# ---------------------------------------------------------------- result

def _coact_top(c_FF: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row the c largest off-diagonal counts (> 0), ties to the lower index; -1 / 0 unused."""
  F = len(c_FF)
  cnt = c_FF.astype(np.int64)
  np.fill_diagonal(cnt, -1)
  order = np.argsort(-cnt, axis=1, kind="stable")[:, :c]
  top = np.take_along_axis(cnt, order, 1)
  idx = np.full((F, c), -1, np.int32)
  out = np.zeros((F, c), np.int64)
  w = order.shape[1]
  idx[:, :w] = np.where(top > 0, order, -1)
  out[:, :w] = np.maximum(top, 0)
  return idx, out


def _result(p1: dict, p2: dict, s: ScanSettings) -> dict:
  F = len(p1["count"])
  n_tok = int(p1["n_tokens"])
  count = p1["count"].astype(np.int64)
  total = p1["sum"].astype(np.float64) + p1["sum_c"].astype(np.float64)
  r = {"n_tokens": n_tok, "n_latents": F, "k_top": s.k_top, "n_intervals": s.n_intervals,
       "per_interval": s.per_interval, "n_bins": s.n_bins}
  live = p1["top_r"] >= 0
  r["top_values"] = np.where(live, p1["top_v"], 0.0).astype(np.float32)
  r["top_rows"], r["top_pos"] = p1["top_r"].astype(np.int32), p1["top_p"].astype(np.int32)
  r["count"] = count
  r["density"] = count / n_tok if n_tok else np.zeros(F)
  r["max"] = p1["max"].astype(np.float32)
  r["mean_active"] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
  r["hist_edges"] = np.linspace(s.log10_min, s.log10_max, s.n_bins + 1)
  r["hist_counts"] = p1["hist"].astype(np.int64)
  r["interval_edges"] = p2["edges"].astype(np.float32)
  r["interval_counts"] = p2["icount"].astype(np.int64)
  r["interval_values"] = p2["val"].astype(np.float32)
  r["interval_rows"], r["interval_pos"] = p2["row"].astype(np.int32), p2["pos"].astype(np.int32)
  if "coact" in p1:
    r["coact_top_index"], r["coact_top_count"] = _coact_top(p1["coact"], s.coact_top)
  else:
    r["coact_top_index"] = r["coact_top_count"] = None
  return r


# ---------------------------------------------------------------- state file

def _write_npz(path: str, meta: dict, arrays: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
  os.replace(tmp, path)


def _save_result(path: str, fp: dict, result: dict) -> None:
  arrays = {f"r/{k}": v for k, v in result.items() if isinstance(v, np.ndarray)}
  ints = {k: result[k] for k in _INT_KEYS}
  _write_npz(path, {**fp, "phase": "done", "ints": ints}, arrays)


def _load(path: str, fp: dict):
  """None (no file), ("done", result) or (phase, next_batch, {"p1": ..., "p2": ...})."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      arrays = {k: z[k] for k in z.files if k != "meta"}
  except Exception as e:  # noqa: BLE001 - any unreadable file is refused the same way
    raise ConfigError(f"state_path={path!r}: not a readable feature-scan state "
                      f"({type(e).__name__}); delete it or choose another path") from None
  for key, want in fp.items():
    if meta.get(key) != want:
      raise ConfigError(f"state_path={path!r} was written for {key}={meta.get(key)!r}, this scan "
                        f"has {key}={want!r}: delete it or choose another path")
  if meta["phase"] == "done":
    result = {**meta["ints"], "coact_top_index": None, "coact_top_count": None}
    result.update({k[2:]: v for k, v in arrays.items()})
    return "done", result
  parts = {"p1": {}, "p2": {}}
  for k, v in arrays.items():
    part, name = k.split("/", 1)
    parts[part][name] = v
  return meta["phase"], meta["next"], parts


# ---------------------------------------------------------------- the run

@functools.lru_cache(maxsize=8)
def _updates(s: ScanSettings, dense: bool, mesh):
  kw = {} if mesh is None else {"out_shardings": NamedSharding(mesh, P())}
  return (jax.jit(functools.partial(_pass1, s, dense), **kw),
          jax.jit(functools.partial(_pass2, s), **kw))


def _encoder(encode: Callable):
  """jit(encode) with float32 codes, the same compiled function for both passes (cached per
  encoder, so reruns and resumptions reuse it)."""
  try:
    return _encoder_cached(encode)
  except TypeError:                       # an unhashable callable: no cache
    return jax.jit(lambda x_ND: encode(x_ND).astype(jnp.float32))


@functools.lru_cache(maxsize=2)
def _encoder_cached(encode: Callable):
  return jax.jit(lambda x_ND: encode(x_ND).astype(jnp.float32))


class _Run:
  """The loop over batches of one pass, its saving and its stop (one object per scan call)."""

  def __init__(self, batches, encode, n_tok, mesh, path, fp, progress, stop_after, every):
    self.batches, self.enc, self.n_tok, self.mesh = batches, _encoder(encode), n_tok, mesh
    self.path, self.fp, self.progress, self.stop_after = path, fp, progress, stop_after
    self.every, self.done, self.last = every, 0, time.monotonic()

  def put(self, tree):
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, tree)
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def batch(self, i: int):
    b = self.batches[i]
    _check_batch(b, i, self.n_tok)
    row, pos = np.asarray(b["row"], np.int32), np.asarray(b["pos"], np.int32)
    arrays = (b["x"], row, pos, np.asarray(b["valid"], bool))
    if self.mesh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    sh = NamedSharding(self.mesh, P("data"))
    return tuple(jax.device_put(a, sh) for a in arrays)

  def save(self, phase: int, nxt: int, state: dict) -> None:
    if self.path is None:
      return
    host = jax.device_get(state)
    arrays = {f"{part}/{k}": np.asarray(v) for part in host for k, v in host[part].items()}
    _write_npz(self.path, {**self.fp, "phase": phase, "next": nxt}, arrays)
    self.last = time.monotonic()

  def loop(self, phase: int, start: int, state: dict, step) -> dict | None:
    """Runs batches start.. of one pass with step(state, i, batch); None when stopped."""
    n = len(self.batches)
    for i in range(start, n):
      if self.stop_after is not None and self.done >= self.stop_after:
        self.save(phase, i, state)
        return None
      try:
        new = step(state, i, self.batch(i))
      except BaseException:
        self._save_quietly(phase, i, state)
        raise
      jax.block_until_ready(state)          # at most one batch in flight
      state, self.done = new, self.done + 1
      if self.progress is not None:
        self.progress(phase, i + 1, n)
      if self.path is not None and time.monotonic() - self.last >= self.every:
        self.save(phase, i + 1, state)
    return state

  def _save_quietly(self, phase: int, nxt: int, state: dict) -> None:
    try:
      self.save(phase, nxt, state)
    except Exception:  # noqa: BLE001 - keep the original error; the last periodic save stands
      pass


def _fingerprint(s: ScanSettings, n_latents: int, n: int, n_tok: int) -> dict:
  fp = {"version": _VERSION, "n_latents": n_latents, "n_batches": n, "batch_tokens": n_tok}
  fp.update({f"settings.{k}": v for k, v in dataclasses.asdict(s).items()})
  return json.loads(json.dumps(fp))


def scan(batches, encode, n_latents: int, settings: ScanSettings, *, mesh=None,
         state_path: str | None = None, progress=None, stop_after: int | None = None,
         save_seconds: float = 60.0) -> dict | None:
  """The two-pass feature scan (module docstring): the result dict of numpy arrays.

  mesh: split each batch's tokens over the mesh's `data` axis. state_path: resumable state
  (.npz); a rerun continues it, or returns the saved result when the scan had finished.
  progress(pass, batches_done, n_batches) is called after each batch. stop_after (for tests):
  return None after this many batches in this call, with the state saved. save_seconds: the
  least time between periodic saves (0: after every batch).
  """
  _check_settings(settings, n_latents)
  n, n_tok = _check_batches(batches, encode, n_latents, mesh)
  errors.finite("save_seconds", save_seconds, low=0.0)
  fp = _fingerprint(settings, int(n_latents), n, n_tok)
  saved = _load(state_path, fp) if state_path else None
  if saved is not None and saved[0] == "done":
    return saved[1]
  dense = n_latents <= DENSE_COACT_MAX
  f1, f2 = _updates(settings, dense, mesh)
  run = _Run(batches, encode, n_tok, mesh, state_path, fp, progress, stop_after, save_seconds)
  phase, start, host = saved or (1, 0, {"p1": _init1(n_latents, settings, dense), "p2": {}})
  state = {"p1": run.put(host["p1"]), "p2": run.put(host["p2"])}

  def step1(st, i, b):
    return {"p1": f1(st["p1"], run.enc(b[0]), *b[1:]), "p2": st["p2"]}

  def step2(st, i, b):
    return {"p1": st["p1"], "p2": f2(st["p2"], run.enc(b[0]), *b[1:], np.int32(i))}

  if phase == 1:
    state = run.loop(1, start, state, step1)
    if state is None:
      return None
    p2 = _init2(np.asarray(jax.device_get(state["p1"]["max"])), settings)
    state, start = {"p1": state["p1"], "p2": run.put(p2)}, 0
    run.save(2, 0, state)
  state = run.loop(2, start, state, step2)
  if state is None:
    return None
  host = jax.device_get(state)
  result = _result(host["p1"], host["p2"], settings)
  if state_path:
    _save_result(state_path, fp, result)
  return result
