"""Per-latent dashboard data: logit effects, decoder neighbours, JSON-ready latent records and
the Neuronpedia batch export (evals notes 4.1-4.3).

The input is a feature scan's result dict (numpy arrays; F latents, k top slots):

    n_tokens, n_latents, k_top, n_intervals, per_interval, n_bins       ints
    top_values/top_rows/top_pos [F, k]       descending; unused slots value 0, row -1, pos -1
    count [F], density [F] (= count / n_tokens), max [F] (0 if dead), mean_active [F]
    hist_edges [n_bins+1] (log10 of the activation), hist_counts [F, n_bins]
    interval_edges [F, n+1] (lowest edge 0 = just above 0), interval_counts [F, n]
    interval_values/rows/pos [F, n, per_interval] (unused: value 0, row -1)
    coact_top_index [F, c] (-1 unused), coact_top_count [F, c]   (or both None)

with `ids` [R, T] the token rows the scan read (row r = ids[r]), `special` [R, T] (BOS/pad:
never a qualifying token, shown greyed with value 0), `decode(list_of_ids) -> list[str]` (one
string per token) and optionally `acts_of(latent, row) -> [T]` to recompute the activations
of a displayed row (without it only the qualifying token carries its value).

logit_effects: W_dec[i] @ W_U for every latent (no final-norm scale, as SAEDashboard), top and
bottom k entries and a 50-bin histogram on [min, max] of all V entries, in blocks of latents
(never [F, V] at once). decoder_neighbours: top-k cosine neighbours of the decoder rows,
itself excluded, in blocks of [B, F].

A record (latent_records) holds index, layer, dead, count, density, max, mean_active,
n_prompts_total (R), n_tokens_in_prompt (T), top (contexts), intervals (lowest to highest:
bin_min, bin_max, bin_contains = share of the latent's firing tokens in the interval,
samples), act_hist (log10_edges, counts), logits (top/bottom [{id, token, value}],
hist_edges, hist_counts) or None, neighbours [{index, cosine}] or None, coact [{index,
count, frac = count / the latent's count}] or None. A context: tokens, values, special,
qualifying_token_index, row, pos, value (the scan's value); `window` (before, after) tokens
around the qualifying one, clipped to the row. Floats are rounded to 5 decimals.

neuronpedia_batches / neuronpedia_skipped / write_neuronpedia: SAEDashboard's batch files
(notes 4.3). Batch n holds the live latents with index in [n*batch_size, (n+1)*batch_size);
dead latents (count 0, or log10 density below `log_sparsity` when given) are left out and
listed in skipped_indexes.json. freq_hist bars stand at the geometric centres of the log10
bins (10**centre). Activations: the top contexts first (bin_min -1, bin_max = max,
bin_contains -1), then the intervals, highest first.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.errors import ConfigError

_BLOCK_ELEMENTS = 1 << 25        # floats in one [B, V] or [B, F] block (128 MiB in float32)
_HIGHEST = jax.lax.Precision.HIGHEST


def _r5(x) -> float:
  return round(float(x), 5)


def _r5s(a) -> list[float]:
  return [round(float(v), 5) for v in np.asarray(a).ravel()]


def _block_rows(n_rows: int, per_row: int, block: int | None) -> int:
  if block is not None:
    return max(1, min(int(block), n_rows))
  return max(1, min(n_rows, _BLOCK_ELEMENTS // max(per_row, 1)))


def _padded(w, start: int, rows: int):
  blk = w[start:start + rows]
  if blk.shape[0] < rows:
    blk = jnp.concatenate([blk, jnp.zeros((rows - blk.shape[0],) + blk.shape[1:], blk.dtype)])
  return blk


# ---------------------------------------------------------------- logit effects


@functools.partial(jax.jit, static_argnames=("k", "bins", "precision"))
def _logit_block(w_BD, wu_DV, k: int, bins: int, precision: str):
  v_BV = jnp.dot(w_BD, wu_DV, precision=precision)
  top_v, top_i = jax.lax.top_k(v_BV, k)
  neg_v, neg_i = jax.lax.top_k(-v_BV, k)
  lo, hi = v_BV.min(axis=1), v_BV.max(axis=1)
  width = jnp.where(hi > lo, (hi - lo) / bins, 1.0)
  b_BV = jnp.clip(jnp.floor((v_BV - lo[:, None]) / width[:, None]), 0, bins - 1)
  counts = jax.vmap(lambda b: jnp.bincount(b, length=bins))(b_BV.astype(jnp.int32))
  edges = lo[:, None] + width[:, None] * jnp.arange(bins + 1, dtype=v_BV.dtype)
  return top_v, top_i, -neg_v, neg_i, edges, counts


def logit_effects(W_dec_FD, unembed_DV, k: int = 10, *, bins: int = 50,
                  block: int | None = None, precision: str = "highest") -> dict:
  """W_dec[i] @ W_U per latent: top_ids/top_values [F, k] (descending), bottom_ids/
  bottom_values [F, k] (most negative first), hist_edges [F, bins+1] and hist_counts
  [F, bins] (equal bins on [min, max] of the V entries). `block` latents per jitted step
  (default: about 2^25 / V). precision: of the matmul ("highest": float32 on every backend;
  "default" is faster on GPU/TPU at TF32/bf16 accuracy)."""
  w, wu = np.asarray(W_dec_FD), np.asarray(unembed_DV)
  if w.ndim != 2 or wu.ndim != 2 or w.shape[1] != wu.shape[0]:
    raise ConfigError(f"W_dec_FD {w.shape} and unembed_DV {wu.shape}: expected [F, D] and "
                      "[D, V] with the same D")
  if isinstance(k, bool) or not 1 <= int(k) <= wu.shape[1] or int(bins) < 1:
    raise ConfigError(f"k={k!r}, bins={bins!r}: expected 1 <= k <= V={wu.shape[1]}, bins >= 1")
  if precision not in ("highest", "high", "default"):
    raise ConfigError(f"precision={precision!r}: expected 'highest', 'high' or 'default'")
  F = w.shape[0]
  rows = _block_rows(F, wu.shape[1], block)
  w_j, wu_j = jnp.asarray(w, jnp.float32), jnp.asarray(wu, jnp.float32)
  parts = []
  for s in range(0, F, rows):
    out = _logit_block(_padded(w_j, s, rows), wu_j, int(k), int(bins), str(precision))
    parts.append([np.asarray(o)[:min(rows, F - s)] for o in out])
  keys = ("top_values", "top_ids", "bottom_values", "bottom_ids", "hist_edges", "hist_counts")
  res = {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(keys)}
  res["hist_edges"] = res["hist_edges"].astype(np.float64)
  res["hist_counts"] = res["hist_counts"].astype(np.int64)
  return res


# ---------------------------------------------------------------- decoder neighbours


@functools.partial(jax.jit, static_argnames=("k",))
def _neighbour_block(start, wn_BD, wn_FD, k: int):
  cos_BF = jnp.dot(wn_BD, wn_FD.T, precision=_HIGHEST)
  me = start + jnp.arange(wn_BD.shape[0])
  cos_BF = jnp.where(jnp.arange(wn_FD.shape[0])[None, :] == me[:, None], -jnp.inf, cos_BF)
  return jax.lax.top_k(cos_BF, k)


def decoder_neighbours(W_dec_FD, k: int = 10, *, block: int | None = None) -> dict:
  """Top-k cosine neighbours of each decoder row, itself excluded: index [F, k] int32 and
  cosine [F, k] float32, descending. A zero row has cosine 0 with every other."""
  w = np.asarray(W_dec_FD)
  if w.ndim != 2 or w.shape[0] < 2:
    raise ConfigError(f"W_dec_FD {w.shape}: expected [F, D] with F >= 2")
  F = w.shape[0]
  if isinstance(k, bool) or not 1 <= int(k) <= F - 1:
    raise ConfigError(f"k={k!r}: expected 1 <= k <= F - 1 = {F - 1}")
  w_j = jnp.asarray(w, jnp.float32)
  norm = jnp.linalg.norm(w_j, axis=1, keepdims=True)
  wn = w_j / jnp.where(norm > 0, norm, 1.0)
  rows = _block_rows(F, F, block)
  cos, idx = [], []
  for s in range(0, F, rows):
    v, i = _neighbour_block(jnp.int32(s), _padded(wn, s, rows), wn, int(k))
    n = min(rows, F - s)
    cos.append(np.asarray(v)[:n])
    idx.append(np.asarray(i)[:n])
  return {"index": np.concatenate(idx).astype(np.int32), "cosine": np.concatenate(cos)}


# ---------------------------------------------------------------- validation

_SHAPES = {  # key: shape in terms of F, k (k_top), n (n_intervals), p (per_interval), b (n_bins)
    "top_values": "Fk", "top_rows": "Fk", "top_pos": "Fk", "count": "F", "density": "F",
    "max": "F", "mean_active": "F", "hist_edges": "B", "hist_counts": "Fb",
    "interval_edges": "FN", "interval_counts": "Fn", "interval_values": "Fnp",
    "interval_rows": "Fnp", "interval_pos": "Fnp"}
_INTS = ("n_tokens", "n_latents", "k_top", "n_intervals", "per_interval", "n_bins")


def _check_scan(scan: dict, ids: np.ndarray, special: np.ndarray) -> int:
  missing = [k for k in _INTS + tuple(_SHAPES) if k not in scan]
  if missing:
    raise ConfigError(f"scan has no {missing}: expected the feature scan's result dict")
  n = {k: int(scan[k]) for k in _INTS}
  dims = {"F": n["n_latents"], "k": n["k_top"], "n": n["n_intervals"],
          "N": n["n_intervals"] + 1, "p": n["per_interval"], "b": n["n_bins"],
          "B": n["n_bins"] + 1}
  for key, spec in _SHAPES.items():
    want = tuple(dims[c] for c in spec)
    if np.shape(scan[key]) != want:
      raise ConfigError(f"scan[{key!r}] has shape {np.shape(scan[key])}: expected {want}")
  ci, cc = scan.get("coact_top_index"), scan.get("coact_top_count")
  if (ci is None) != (cc is None) or (ci is not None and (
      np.ndim(ci) != 2 or np.shape(ci) != np.shape(cc) or len(ci) != dims["F"])):
    raise ConfigError(f"scan coact_top_index {np.shape(ci)} / coact_top_count {np.shape(cc)}: "
                      f"expected both None or both [{dims['F']}, c]")
  if ids.ndim != 2 or special.shape != ids.shape:
    raise ConfigError(f"ids {ids.shape} and special {special.shape}: expected the same [R, T]")
  for rk, pk in (("top_rows", "top_pos"), ("interval_rows", "interval_pos")):
    r, p = np.asarray(scan[rk]), np.asarray(scan[pk])
    if r.size and (r.max() >= ids.shape[0] or p.max() >= ids.shape[1]):
      raise ConfigError(f"scan[{rk!r}] / scan[{pk!r}] reach row {r.max()}, position {p.max()}: "
                        f"expected < ids shape {ids.shape}")
  return dims["F"]


def _check_window(window, T: int) -> tuple[int, int]:
  try:
    before, after = (int(w) for w in window)
  except (TypeError, ValueError):
    raise ConfigError(f"window={window!r}: expected (before, after) token counts") from None
  if before < 0 or after < 0 or before + after + 1 > T:
    raise ConfigError(f"window={tuple(window)!r}: expected before, after >= 0 and before + "
                      f"after + 1 <= the row length {T}")
  return before, after


def _check_extras(logits, neighbours, F: int) -> None:
  for name, d, keys in (("logits", logits, ("top_ids", "top_values", "bottom_ids",
                                            "bottom_values", "hist_edges", "hist_counts")),
                        ("neighbours", neighbours, ("index", "cosine"))):
    if d is None:
      continue
    bad = [k for k in keys if k not in d or len(d[k]) != F]
    if bad:
      raise ConfigError(f"{name} {bad}: expected {keys} with one row per latent ({F})")


# ---------------------------------------------------------------- records


class _Contexts:
  """Context windows of one scan over `ids`, with activations recomputed per (latent, row)."""

  def __init__(self, ids, special, decode: Callable, acts_of: Callable | None, window):
    self.ids, self.special, self.decode = ids, special, decode
    self.acts_of, self.window = acts_of, window
    self.latent, self.cache = None, {}

  def _acts(self, latent: int, row: int) -> np.ndarray:
    if latent != self.latent:
      self.latent, self.cache = latent, {}
    if row not in self.cache:
      a = np.asarray(self.acts_of(latent, row), np.float64).ravel()
      if a.shape != (self.ids.shape[1],):
        raise ConfigError(f"acts_of({latent}, {row}) has shape {a.shape}: expected "
                          f"({self.ids.shape[1]},)")
      self.cache[row] = a
    return self.cache[row]

  def one(self, latent: int, row: int, pos: int, value: float) -> dict:
    T = self.ids.shape[1]
    lo, hi = max(0, pos - self.window[0]), min(T, pos + self.window[1] + 1)
    sp = self.special[row, lo:hi]
    if self.acts_of is None:
      vals = np.zeros(hi - lo)
      vals[pos - lo] = value
    else:
      vals = np.where(sp, 0.0, self._acts(latent, row)[lo:hi])
    toks = [str(t) for t in self.decode([int(t) for t in self.ids[row, lo:hi]])]
    if len(toks) != hi - lo:
      raise ConfigError(f"decode returned {len(toks)} strings for {hi - lo} ids: expected one "
                        "string per token")
    return {"tokens": toks, "values": _r5s(vals), "special": sp.tolist(),
            "qualifying_token_index": pos - lo, "row": row, "pos": pos, "value": _r5(value)}

  def many(self, latent: int, values, rows, pos) -> list[dict]:
    return [self.one(latent, int(r), int(p), float(v)) for v, r, p in zip(values, rows, pos)
            if r >= 0 and not self.special[r, p]]


def _intervals(scan: dict, i: int, ctx: _Contexts) -> list[dict]:
  count = int(scan["count"][i])
  if count == 0:
    return []
  edges, out = scan["interval_edges"][i], []
  for j in range(int(scan["n_intervals"])):
    out.append({"bin_min": _r5(edges[j]), "bin_max": _r5(edges[j + 1]),
                "bin_contains": _r5(scan["interval_counts"][i, j] / count),
                "samples": ctx.many(i, scan["interval_values"][i, j], scan["interval_rows"][i, j],
                                    scan["interval_pos"][i, j])})
  return out


def _logit_panel(logits: dict | None, i: int, decode: Callable) -> dict | None:
  if logits is None:
    return None
  out = {}
  for side in ("top", "bottom"):
    tids = [int(t) for t in logits[f"{side}_ids"][i]]
    out[side] = [{"id": t, "token": str(s), "value": _r5(v)}
                 for t, s, v in zip(tids, decode(tids), logits[f"{side}_values"][i])]
  out["hist_edges"] = _r5s(logits["hist_edges"][i])
  out["hist_counts"] = [int(c) for c in logits["hist_counts"][i]]
  return out


def _neighbour_panels(scan: dict, neighbours: dict | None, i: int):
  near = None if neighbours is None else [
      {"index": int(j), "cosine": _r5(c)}
      for j, c in zip(neighbours["index"][i], neighbours["cosine"][i]) if j >= 0]
  coact = None
  if scan.get("coact_top_index") is not None:
    n = max(int(scan["count"][i]), 1)
    coact = [{"index": int(j), "count": int(c), "frac": _r5(c / n)}
             for j, c in zip(scan["coact_top_index"][i], scan["coact_top_count"][i])
             if j >= 0 and j != i]
  return near, coact


def _record(scan: dict, i: int, ctx: _Contexts, logits, neighbours, layer_label: str) -> dict:
  count = int(scan["count"][i])
  near, coact = _neighbour_panels(scan, neighbours, i)
  return {"index": i, "layer": str(layer_label), "dead": count == 0, "count": count,
          "density": float(scan["density"][i]), "max": _r5(scan["max"][i]),
          "mean_active": _r5(scan["mean_active"][i]),
          "n_prompts_total": int(ctx.ids.shape[0]), "n_tokens_in_prompt": int(ctx.ids.shape[1]),
          "top": ctx.many(i, scan["top_values"][i], scan["top_rows"][i], scan["top_pos"][i]),
          "intervals": _intervals(scan, i, ctx),
          "act_hist": {"log10_edges": _r5s(scan["hist_edges"]),
                       "counts": [int(c) for c in scan["hist_counts"][i]]},
          "logits": _logit_panel(logits, i, ctx.decode), "neighbours": near, "coact": coact}


def latent_records(scan: dict, *, ids, special, decode: Callable, logits: dict | None = None,
                   neighbours: dict | None = None, acts_of: Callable | None = None,
                   window=(8, 4), layer_label: str = "") -> list[dict]:
  """One JSON-ready dict per latent of `scan` (module docstring); logits from
  logit_effects, neighbours from decoder_neighbours."""
  ids, special = np.asarray(ids), np.asarray(special, bool)
  F = _check_scan(scan, ids, special)
  window = _check_window(window, ids.shape[1])
  _check_extras(logits, neighbours, F)
  ctx = _Contexts(ids, special, decode, acts_of, window)
  return [_record(scan, i, ctx, logits, neighbours, layer_label) for i in range(F)]


# ---------------------------------------------------------------- Neuronpedia


def _skipped(rec: dict, log_sparsity: float | None) -> bool:
  if rec["dead"] or rec["count"] == 0:
    return True
  return log_sparsity is not None and math.log10(max(rec["density"], 1e-300)) < log_sparsity


def _np_activation(c: dict, bin_min, bin_max, bin_contains) -> dict:
  return {"bin_min": _r5(bin_min), "bin_max": _r5(bin_max), "bin_contains": _r5(bin_contains),
          "tokens": list(c["tokens"]), "values": _r5s(c["values"]),
          "qualifying_token_index": int(c["qualifying_token_index"])}


def _bars(edges, counts, log10: bool) -> tuple[list, list]:
  e = np.asarray(edges, np.float64)
  centres = (e[:-1] + e[1:]) / 2
  return _r5s(10.0 ** centres if log10 else centres), _r5s(counts)


def _np_feature(rec: dict, dataset: str) -> dict:
  acts = [_np_activation(c, -1, rec["max"], -1) for c in rec["top"]]
  for iv in reversed(rec["intervals"]):
    acts += [_np_activation(c, iv["bin_min"], iv["bin_max"], iv["bin_contains"])
             for c in iv["samples"]]
  lg = rec.get("logits") or {"top": [], "bottom": [], "hist_edges": [0.0], "hist_counts": []}
  fv, fh = _bars(rec["act_hist"]["log10_edges"], rec["act_hist"]["counts"], log10=True)
  lv, lh = _bars(lg["hist_edges"], lg["hist_counts"], log10=False)
  return {"feature_index": int(rec["index"]),
          "neg_str": [t["token"] for t in lg["bottom"]],
          "neg_values": _r5s([t["value"] for t in lg["bottom"]]),
          "pos_str": [t["token"] for t in lg["top"]],
          "pos_values": _r5s([t["value"] for t in lg["top"]]),
          "frac_nonzero": _r5(rec["density"]),
          "freq_hist_data_bar_values": fv, "freq_hist_data_bar_heights": fh,
          "logits_hist_data_bar_values": lv, "logits_hist_data_bar_heights": lh,
          "n_prompts_total": int(rec["n_prompts_total"]),
          "n_tokens_in_prompt": int(rec["n_tokens_in_prompt"]),
          "dataset": str(dataset), "activations": acts}


def neuronpedia_batches(records: list[dict], *, model_id: str, layer, sae_set: str,
                        batch_size: int = 128, dataset: str = "",
                        log_sparsity: float | None = None) -> list[dict]:
  """SAEDashboard batch dicts {model_id, layer, sae_set, features}: entry n holds the live
  latents with index // batch_size == n (an empty features list when all are skipped)."""
  if isinstance(batch_size, bool) or int(batch_size) < 1:
    raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer")
  n_batches = max((int(r["index"]) // batch_size for r in records), default=-1) + 1
  batches = [{"model_id": model_id, "layer": layer, "sae_set": sae_set, "features": []}
             for _ in range(n_batches)]
  for rec in sorted(records, key=lambda r: r["index"]):
    if not _skipped(rec, log_sparsity):
      batches[int(rec["index"]) // batch_size]["features"].append(_np_feature(rec, dataset))
  return batches


def neuronpedia_skipped(records: list[dict], *, model_id: str, layer, sae_set: str,
                        log_sparsity: float | None = None) -> dict:
  """skipped_indexes.json: {model_id, layer, sae_set, log_sparsity, skipped_indexes} with the
  dead latents (and those below log_sparsity when given)."""
  return {"model_id": model_id, "layer": layer, "sae_set": sae_set,
          "log_sparsity": log_sparsity,
          "skipped_indexes": sorted(int(r["index"]) for r in records
                                    if _skipped(r, log_sparsity))}


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, allow_nan=False, separators=(",", ":"))
  os.replace(tmp, path)


def write_neuronpedia(directory: str, batches: list[dict], skipped: dict) -> list[str]:
  """Writes batch-{n}.json for every batch with features, and skipped_indexes.json (each under
  a temporary name, then renamed); returns the paths written."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for n, batch in enumerate(batches):
    if batch["features"]:
      paths.append(os.path.join(directory, f"batch-{n}.json"))
      _write_json(paths[-1], batch)
  paths.append(os.path.join(directory, "skipped_indexes.json"))
  _write_json(paths[-1], skipped)
  return paths
