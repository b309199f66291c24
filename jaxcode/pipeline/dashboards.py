"""The dashboards stage: one dictionary's latents scanned over a model's tokens, and the
per-latent records the dashboard pages and the Neuronpedia export are written from.

  check(block, lm, sae, hookpoint, seq_len)   every check before compute (one line each)
  LMBatches(lm, packed, hookpoint, rows)      the scan's batches: the model computes the
                                              hookpoint on `rows` packed rows at a time;
                                              BOS / special / padding tokens are not valid
  CacheBatches(cache, hookpoint, n)           or an activation cache's stored tokens, n at
                                              a time (no model runs)
  records(block, folder, lm, sae, hookpoint, packed, mesh, layer_label)
      feature_scan.scan (resumable: folder/scan_state.npz), then the derived panels: logit
      effects (causal LMs, dictionaries writing d_model-wide vectors: W_dec[i] @ W_U with
      the unembedding read from the head itself), decoder-cosine neighbours; contexts with
      every token's activation recomputed per row (cached); returns (records, summary)

`block` is configs/dashboards.py's `scan` block: k_top, n_intervals, per_interval, n_bins,
coact_top, seed, window_before, window_after, rows_per_batch, max_latents (0: all).
"""

from __future__ import annotations

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis import dashboard_data, feature_scan
from jaxcode.errors import ConfigError
from jaxcode.models import sae_io


def settings(block) -> feature_scan.ScanSettings:
  return feature_scan.ScanSettings(
      k_top=int(block.k_top), n_intervals=int(block.n_intervals),
      per_interval=int(block.per_interval), n_bins=int(block.n_bins),
      coact_top=int(block.coact_top), seed=int(block.seed))


def check(block, lm, sae: sae_io.ExternalSAE | None, hookpoint: str, seq_len: int) -> None:
  """The scan settings, the window against the sequence length, the hookpoint and the
  dictionary's width against it (sae None: not yet trained); ConfigError naming the bad value."""
  for name in ("k_top", "n_intervals", "per_interval", "n_bins", "coact_top", "rows_per_batch"):
    v = block[name]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ConfigError(f"scan.{name}={v!r}: expected a positive integer")
  for name in ("window_before", "window_after", "max_latents"):
    v = block[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"scan.{name}={v!r}: expected an integer >= 0")
  if block.window_before + block.window_after + 1 > seq_len:
    raise ConfigError(f"scan window {block.window_before} + 1 + {block.window_after} tokens is "
                      f"longer than the sequence length {seq_len}: expected a shorter window")
  if hookpoint not in lm.hookpoint_names():
    raise ConfigError(f"hookpoint {hookpoint!r}: the {lm.model_type} model has no such "
                      "hookpoint")
  if sae is not None:
    sae_io.check_width(sae, lm.hookpoint_width(hookpoint), hookpoint)


class LMBatches:
  """batches[i] = {'x': [rows * T, D], 'row', 'pos', 'valid'} of packed rows i*rows .. (the
  last batch padded with invalid rows), the model computing the hookpoint."""

  def __init__(self, lm, packed, hookpoint: str, rows: int):
    self.lm, self.packed, self.hook, self.rows = lm, packed, hookpoint, int(rows)
    self.R, self.T = packed.input_ids.shape
    self.fwd = lm.forward_fn((hookpoint,))

  def __len__(self) -> int:
    return -(-self.R // self.rows)

  def __getitem__(self, i: int) -> dict:
    r0 = i * self.rows
    r = np.arange(r0, r0 + self.rows)
    ok = r < self.R
    rr = np.where(ok, r, 0)
    ids, mask = self.packed.input_ids[rr], self.packed.attention_mask[rr]
    special = self.packed.special[rr]
    x = self.fwd(self.lm.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    x = np.asarray(x[self.hook], np.float32).reshape(-1, x[self.hook].shape[-1])
    valid = (mask.astype(bool) & ~special & ok[:, None]).reshape(-1)
    return {"x": x, "row": np.repeat(r.astype(np.int32), self.T),
            "pos": np.tile(np.arange(self.T, dtype=np.int32), self.rows), "valid": valid}


class CacheBatches:
  """batches[i] = tokens i*n .. (i+1)*n - 1 of an activation cache (jaxcode.data.activations;
  the last batch padded with invalid tokens), `row` / `pos` the cached token's packed row and
  column (the rows of cache_lib.load_packed of the cache's extract block, in order): the scan
  reads the stored activations, no model runs. A cache keeps no special tokens by default."""

  def __init__(self, cache, hookpoint: str, tokens_per_batch: int, max_tokens: int = 0):
    if hookpoint not in cache.hookpoints:
      raise ConfigError(f"hookpoint {hookpoint!r}: the cache holds {list(cache.hookpoints)}")
    self.cache, self.hook, self.n = cache, hookpoint, int(tokens_per_batch)
    self.total = min(cache.n_tokens, int(max_tokens)) if max_tokens else cache.n_tokens

  def __len__(self) -> int:
    return -(-self.total // self.n)

  def __getitem__(self, i: int) -> dict:
    idx = np.arange(i * self.n, (i + 1) * self.n)
    ok = idx < self.total
    got = idx[ok]
    x = np.zeros((self.n, self.cache.width(self.hook)), np.float32)
    x[ok] = np.asarray(self.cache.get(self.hook, got), np.float32)
    info = self.cache.token_info(got)
    row, pos = np.full(self.n, -1, np.int32), np.full(self.n, -1, np.int32)
    row[ok], pos[ok] = info["row"], info["col"]
    return {"x": x, "row": row, "pos": pos, "valid": ok}


def unembedding(lm) -> np.ndarray | None:
  """W_U [D, V] of a causal LM's head (logits = final W_U before any soft-cap), read off the
  head itself: it is linear in `final`, so its derivative along each basis vector e_d is row d
  (tied and untied heads alike); None for models without logits."""
  if not getattr(lm, "has_logits", False) or lm.model_type == "bert":
    return None
  module = lm.module
  if getattr(module, "final_softcap", None) is not None:
    module = module.clone(final_softcap=None)
  one = jnp.zeros((1, 1), jnp.int32)

  def head(z_D):
    rec = module.apply({"params": lm.params}, one, jnp.ones((1, 1), jnp.int32), 0, True,
                       edits={"final": lambda x: z_D[None, None].astype(x.dtype)})
    return rec["logits"][0, 0]
  D = lm.d_model
  # the head is linear: its [V, D] Jacobian is the forward-mode derivative along each basis e_d
  jac = jax.jit(jax.vmap(lambda e: jax.jvp(head, (jnp.zeros(D),), (e,))[1]))(jnp.eye(D))
  return np.asarray(jac, np.float32)        # [D, V]


def token_strings(tok):
  """decode(ids) -> one display string per token: WordPiece pieces as they join ('##ing' ->
  'ing', a word start gets its space), other tokenizers' single-token decodes (SentencePiece
  and byte-level BPE keep their leading spaces)."""
  def decode(ids):
    ids = [int(i) for i in ids]
    pieces = tok.convert_ids_to_tokens(ids)
    if any(isinstance(p, str) and p.startswith("##") for p in pieces) or \
        type(tok).__name__.startswith("Bert"):
      return [p[2:] if p.startswith("##") else " " + p for p in pieces]
    return [tok.decode([i]) for i in ids]
  return decode


def _acts_of(lm, sae, hookpoint: str, packed, cap: int = 256):
  """acts_of(latent, row) -> [T] codes of that latent over the row (rows cached, LRU)."""
  fwd = lm.forward_fn((hookpoint,))
  cache: collections.OrderedDict = collections.OrderedDict()

  def codes(row: int) -> np.ndarray:
    if row not in cache:
      ids = jnp.asarray(packed.input_ids[row:row + 1], jnp.int32)
      mask = jnp.asarray(packed.attention_mask[row:row + 1], jnp.int32)
      cache[row] = np.asarray(sae_io.encode(sae, fwd(lm.params, ids, mask)[hookpoint][0]))
      if len(cache) > cap:
        cache.popitem(last=False)
    cache.move_to_end(row)
    return cache[row]
  return lambda latent, row: codes(int(row))[:, int(latent)]


def records(block, folder: str, lm, sae, hookpoint: str, packed, mesh=None, layer_label: str = "",
            progress=None, batches=None) -> tuple[list[dict], dict]:
  """The scan and the per-latent records (module docstring); the summary holds the scan's
  sizes and density statistics. batches: the scan's token stream (default: LMBatches of
  `packed`; a CacheBatches of a cache whose rows are `packed`)."""
  os.makedirs(folder, exist_ok=True)
  if batches is None:
    batches = LMBatches(lm, packed, hookpoint, block.rows_per_batch)
  res = feature_scan.scan(batches, lambda x: sae_io.encode(sae, x), sae.d_sae, settings(block),
                          mesh=mesh, state_path=os.path.join(folder, "scan_state.npz"),
                          progress=progress)
  w_dec = np.asarray(sae_io.external_raw_arrays(sae)["W_dec"], np.float32)
  wu = unembedding(lm) if sae.d_out == lm.d_model else None
  logits = dashboard_data.logit_effects(w_dec, wu) if wu is not None else None
  neighbours = dashboard_data.decoder_neighbours(w_dec)
  special = ~packed.attention_mask.astype(bool) | packed.special
  recs = dashboard_data.latent_records(
      res, ids=packed.input_ids, special=special, decode=token_strings(lm.tokenizer),
      logits=logits,
      neighbours=neighbours, acts_of=_acts_of(lm, sae, hookpoint, packed),
      window=(int(block.window_before), int(block.window_after)), layer_label=layer_label)
  if block.max_latents:
    recs = recs[:int(block.max_latents)]
  d = res["density"]
  summary = {"hookpoint": hookpoint, "n_latents": int(res["n_latents"]),
             "n_tokens": int(res["n_tokens"]), "dead_fraction": float(np.mean(d == 0)),
             "median_density": float(np.median(d)), "logit_effects": logits is not None,
             "coactivation": res["coact_top_index"] is not None}
  return recs, summary
