"""SynthSAEBench's metrics of a learned dictionary against the generator's ground truth
(notes/evals.md section 3.3).

C = |cos(W_dec_i, d_j)| [M latents, N true features].
* MCC: the Hungarian matching of latents to features on 1 - C (scipy's
  linear_sum_assignment; rectangular, min(M, N) pairs), mean matched |cos|.  Weights only.
* uniqueness: the number of distinct argmax_j C_ij over latents, divided by M.
* detection: latent i against g(i) = argmax_j C_ij; over the eval samples, counts of
  (f_i > 0) against (a_g(i) > 0); per-latent precision, recall, F1 and accuracy (0 where a
  ratio is undefined, so a dead latent scores F1 0), then the unweighted mean over latents.
* explained variance: 1 - E|h - h_hat|^2 / (E|h|^2 - |E h|^2), accumulated over batches.
* also true_l0, sae_l0, dead_latents (never fired on the eval samples) and shrinkage
  (mean |h_hat| / |h| over samples with |h| >= 1e-6).
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment


def abs_cosines(w_dec_MD, true_ND) -> np.ndarray:
  """C [M, N] = |cos| between learned decoder rows and true feature directions."""
  w = np.asarray(w_dec_MD, np.float64)
  t = np.asarray(true_ND, np.float64)
  w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
  t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
  return np.abs(w @ t.T)


def mcc(cos_MN: np.ndarray) -> float:
  """Mean |cos| over the Hungarian matching of latents to features."""
  rows, cols = linear_sum_assignment(1.0 - cos_MN)
  return float(cos_MN[rows, cols].mean())


def uniqueness(cos_MN: np.ndarray) -> float:
  """Distinct best-matching features over latents."""
  return float(len(np.unique(np.argmax(cos_MN, axis=1))) / cos_MN.shape[0])


@jax.jit
def _batch_sums(f_BM, a_BN, h_BD, h_hat_BD, match_M):
  on_f = f_BM > 0
  on_a = jnp.take(a_BN > 0, match_M, axis=1)
  i32 = lambda v: jnp.sum(v, axis=0, dtype=jnp.int32)
  err = jnp.sum((h_BD - h_hat_BD) ** 2)
  hn = jnp.linalg.norm(h_BD, axis=-1)
  ok = hn >= 1e-6
  shrink = jnp.sum(jnp.where(ok, jnp.linalg.norm(h_hat_BD, axis=-1) / jnp.where(ok, hn, 1.0), 0))
  return {"tp": i32(on_f & on_a), "fp": i32(on_f & ~on_a), "fn": i32(~on_f & on_a),
          "err": err, "sq": jnp.sum(h_BD * h_BD), "sum_h": jnp.sum(h_BD, 0),
          "true_l0": jnp.sum(a_BN > 0), "sae_l0": jnp.sum(on_f), "fired": jnp.any(on_f, 0),
          "shrink": shrink, "shrink_n": jnp.sum(ok), "n": h_BD.shape[0]}


def _ratio(num, den):
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def detection(tp, fp, fn, n: int) -> dict:
  """Per-latent precision, recall, F1 and accuracy from the counts (0 where undefined), and
  their unweighted means over latents."""
  p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
  f1 = _ratio(2 * p * r, p + r)
  acc = (n - np.asarray(fp) - np.asarray(fn)) / max(n, 1)
  return {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f1.mean()),
          "accuracy": float(acc.mean()), "f1_per_latent": f1}


def evaluate(encode: Callable, decode: Callable, w_dec_MD, true_ND,
             batches: Iterable[tuple]) -> dict:
  """All metrics of one SAE: encode(h) -> f [B, M], decode(f) -> h_hat (raw units), its
  decoder rows W_dec [M, D], the true directions [N, D], and eval batches of (h, a)."""
  cos = abs_cosines(w_dec_MD, true_ND)
  match = jnp.asarray(np.argmax(cos, axis=1))
  tot = None
  for h, a in batches:
    f = encode(h)
    s = _batch_sums(f, a, jnp.asarray(h, jnp.float32), decode(f), match)
    s = jax.tree.map(np.asarray, s)
    tot = s if tot is None else {k: (tot[k] | v if k == "fired" else tot[k] + v)
                                 for k, v in s.items()}
  n = int(tot["n"])
  mean_h = tot["sum_h"] / n
  det = detection(tot["tp"], tot["fp"], tot["fn"], n)
  return {"mcc": mcc(cos), "uniqueness": uniqueness(cos), "f1": det["f1"],
          "precision": det["precision"], "recall": det["recall"], "accuracy": det["accuracy"],
          "explained_variance": float(1.0 - tot["err"] / (tot["sq"] - n * np.sum(mean_h ** 2))),
          "true_l0": float(tot["true_l0"] / n), "sae_l0": float(tot["sae_l0"] / n),
          "dead_latents": int(np.sum(~tot["fired"])),
          "shrinkage": float(tot["shrink"] / max(int(tot["shrink_n"]), 1)), "samples": n}
