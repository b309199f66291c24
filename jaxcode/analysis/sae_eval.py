"""SAE evaluation on a held-out set: reconstruction, sparsity and dictionary statistics.

All sums run over the WHOLE evaluation set (float64 on the host) before any ratio is taken:

* explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - x_bar||^2, x_bar the global mean
  (not per token, not about zero);
* mse = sum ||x - x_hat||^2 / (N * d_in) (per element, raw units);
* cosine = mean over tokens of cos(x, x_hat); l2_ratio = mean ||x_hat|| / ||x|| (both over
  tokens with x != 0);
* relative_reconstruction_bias = E||x_hat||^2 / E<x, x_hat>;
* l0 = mean number of nonzero latents per token; feature density = fraction of tokens on which
  a latent fires; dead_fraction = density 0; dense fractions = density > 1% and > 10%;
  a histogram of log10 density over the latents that fire;
* decoder max-cosine statistics: for every decoder row, the largest cosine with another row.

Figures of these metrics are drawn in jaxcode.report.sae. The spliced language-model metrics come later through ``evaluate_sae`` (``extra`` hook).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.models import sae as sae_lib


class _Sums:
  def __init__(self, d_in: int, d_sae: int):
    self.n = self.n_nonzero = 0
    self.err2 = self.x2 = self.xhat2 = self.dot = self.cos = self.ratio = self.l0 = 0.0
    self.x_sum = np.zeros(d_in)
    self.fires = np.zeros(d_sae)

  def add(self, x, x_hat, f):
    x, x_hat, f = (np.asarray(v, np.float64) for v in (x, x_hat, f))
    nx, nh = np.linalg.norm(x, axis=-1), np.linalg.norm(x_hat, axis=-1)
    self.n += x.shape[0]
    self.err2 += np.sum((x - x_hat) ** 2)
    self.x2 += np.sum(x * x)
    self.x_sum += x.sum(0)
    self.xhat2 += np.sum(x_hat * x_hat)
    self.dot += np.sum(x * x_hat)
    ok = nx > 0                     # all-zero inputs have no direction: left out of both
    self.n_nonzero += int(ok.sum())
    self.cos += np.sum(np.sum(x * x_hat, -1)[ok] / np.maximum(nx[ok] * nh[ok], 1e-30))
    self.ratio += np.sum(nh[ok] / nx[ok])
    active = f != 0
    self.l0 += active.sum()
    self.fires += active.sum(0)


def reconstruction_metrics(batches, d_in: int, d_sae: int, hist_bins: int = 40) -> dict:
  """Metrics from an iterable of (x [B, D], x_hat [B, D], codes [B, M]) in raw units."""
  s = _Sums(d_in, d_sae)
  for x, x_hat, f in batches:
    s.add(x, x_hat, f)
  n = max(s.n, 1)
  mean = s.x_sum / n
  total_var = s.x2 - n * np.dot(mean, mean)     # sum ||x - x_bar||^2 (float64)
  density = s.fires / n
  logd = np.log10(density[density > 0])
  hist, edges = np.histogram(logd, bins=hist_bins, range=(-np.log10(n) - 0.5, 0.0))
  return {
      "n_tokens": int(s.n),
      "l0": s.l0 / n,
      "explained_variance": 1.0 - s.err2 / max(total_var, 1e-30),
      "mse": s.err2 / (n * d_in),
      "cosine": s.cos / max(s.n_nonzero, 1),
      "l2_ratio": s.ratio / max(s.n_nonzero, 1),
      "relative_reconstruction_bias": s.xhat2 / s.dot if s.dot != 0 else float("nan"),
      "dead_fraction": float(np.mean(density == 0)),
      "dense_fraction_1pct": float(np.mean(density > 0.01)),
      "dense_fraction_10pct": float(np.mean(density > 0.1)),
      "feature_density": density,
      "log10_density_hist": {"counts": hist, "edges": edges},
  }


def decoder_max_cosine(w_dec_MD, block: int = 4096) -> dict:
  """For each decoder row the largest cosine with any other row: mean, median, max, >0.9."""
  w = jnp.asarray(w_dec_MD, jnp.float32)
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
  m = w.shape[0]

  @jax.jit
  def rows(start):
    blk = jax.lax.dynamic_slice_in_dim(w, start, min(block, m), 0)
    c = blk @ w.T
    own = start + jnp.arange(blk.shape[0])
    c = c.at[jnp.arange(blk.shape[0]), own].set(-jnp.inf)
    return c.max(-1)

  starts = list(range(0, m, block))
  if m % block:
    starts[-1] = m - min(block, m)
  mx = np.zeros(m)
  for st in starts:
    mx[st:st + min(block, m)] = np.asarray(rows(st))
  return {"mean": float(mx.mean()), "median": float(np.median(mx)), "max": float(mx.max()),
          "frac_over_0.9": float(np.mean(mx > 0.9)), "per_latent": mx}


def evaluate_sae(cfg: sae_lib.SAEConfig, params, aux, x_eval_ND, batch_size: int = 1024,
                 extra: Callable[[Callable, Callable], dict] | None = None) -> dict:
  """All metrics of ONE SAE (unstacked params/aux) on raw held-out activations."""
  enc = jax.jit(lambda x: sae_lib.encode(cfg, params, aux, x))
  dec = jax.jit(lambda f: sae_lib.decode(cfg, params, aux, f))
  x_eval_ND = np.asarray(x_eval_ND, np.float32)

  def batches():
    for i in range(0, len(x_eval_ND), batch_size):
      x = x_eval_ND[i:i + batch_size]
      f = enc(jnp.asarray(x))
      yield x, np.asarray(dec(f)), np.asarray(f)

  out = reconstruction_metrics(batches(), cfg.d_in, cfg.d_sae)
  out["decoder_max_cosine"] = decoder_max_cosine(params["W_dec"])
  if extra is not None:
    out.update(extra(enc, dec))
  return out


def summary(metrics: dict) -> dict:
  """The JSON-friendly scalars of `evaluate_sae` (per-latent arrays dropped)."""
  out = {k: v for k, v in metrics.items() if np.isscalar(v)}
  h = metrics.get("log10_density_hist")
  if h is not None:
    out["log10_density_hist"] = {"counts": np.asarray(h["counts"]).tolist(),
                                 "edges": np.asarray(h["edges"]).tolist()}
  dmc = metrics.get("decoder_max_cosine")
  if dmc is not None:
    out["decoder_max_cosine"] = {k: v for k, v in dmc.items() if k != "per_latent"}
  return out
