"""The NeuroMFA study's measurements and verdicts: held-out evaluation of a decoder LM,
per-claim statistics with error bars, and verdicts computed from them.

Error bars: sampling seeds of the neuron-interaction network (each seed draws its own
neurons and its own matched null) give a mean and a standard error (SE) per quantity;
correlations and fits carry percentile bootstrap intervals. A quantity is "beyond zero"
when mean - z*SE > 0 (z: the config's `z`, 2 by default); a one-seed run has no SE and is
inconclusive. The seed's reported direction of each claim is in DIRECTIONS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
DIRECTIONS = {   # claim: the seed's reported direction (NeuroMFA, Xiao et al., ICLR 2025)
    "claim1": "during training the spectra of large models shift left (alpha0 falls) and "
              "widen (width grows); those of small models do not",
    "claim2": "the emergence degree E rises together with task accuracy across checkpoints",
    "claim3": "E at the end of training grows with model size, roughly as log(size), above a "
              "size threshold",
    "claim5": "data quality shapes emergence: deduplicated data gives higher E than the "
              "standard (duplicated) data; fine-tuning on contaminated data lowers E along "
              "with performance",
}


# ------------------------------------------------------------------ parameter counts

def gpt2_nonembed_params(d_model: int, n_layers: int, d_mlp: int) -> int:
  """Parameters outside wte/wpe: per block ln_1 2d, q/k/v 3(d^2 + d), attention out
  d^2 + d, ln_2 2d, MLP in d*m + m, MLP out m*d + d; then ln_f 2d (the head is tied)."""
  d, m = int(d_model), int(d_mlp)
  return int(n_layers) * (4 * d * d + 2 * d * m + 9 * d + m) + 2 * d


# ------------------------------------------------------------------ evaluation

def evaluator(module, data: dict, chunk: int = 16):
  """params -> held-out next-token loss and accuracy and the two cloze accuracies (module
  doc of jaxcode.pipeline.neuromfa_study_data); one compiled forward of [chunk, T] rows."""
  fwd = jax.jit(lambda p, x, m: module.apply({"params": p}, x, m, module.n_layers,
                                             True)["logits"])

  def logits(params, rows, mask):
    n = len(rows)
    pad = -n % chunk
    rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), rows.dtype)])
    mask = np.concatenate([mask, np.ones((pad, mask.shape[1]), mask.dtype)])
    out = [np.asarray(fwd(params, rows[i:i + chunk], mask[i:i + chunk]))
           for i in range(0, len(rows), chunk)]
    return np.concatenate(out)[:n]

  def evaluate(params) -> dict:
    ids, mask = data["eval"], data["eval_mask"]
    lg = logits(params, ids[:, :-1], mask[:, :-1])
    y, w = ids[:, 1:], (mask[:, 1:] * mask[:, :-1]).astype(np.float64)
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(lg), y))
    out = {"loss": float((ce * w).sum() / w.sum()),
           "acc": float(((lg.argmax(-1) == y) * w).sum() / w.sum())}
    for task in ("cloze_code", "cloze_prose"):
      items, rows = data[task], data[f"{task}_rows"]
      used = np.unique(items[:, 0])
      lg = logits(params, rows[used, :-1], np.ones_like(rows[used, :-1], np.int32))
      at = lg[np.searchsorted(used, items[:, 0]), items[:, 1] - 1]     # predicts position t
      cand = np.take_along_axis(at, items[:, 2:], axis=1)
      out[task] = float((cand.argmax(1) == 0).mean())
    out["task_acc"] = 0.5 * (out["cloze_code"] + out["cloze_prose"])
    return out
  return evaluate


# ------------------------------------------------------------------ statistics

def mean_se(x) -> tuple[float, float]:
  """Mean and standard error over seeds (SE NaN for one value)."""
  x = np.asarray(x, np.float64)
  se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
  return float(x.mean()), se


def beyond(m: float, se: float, z: float) -> int:
  """+1 when m - z*se > 0, -1 when m + z*se < 0, 0 otherwise (or without an SE)."""
  if not np.isfinite(se):
    return 0
  return 1 if m - z * se > 0 else (-1 if m + z * se < 0 else 0)


def spearman_boot(x, y, n_boot: int, seed: int, y_null=None) -> dict:
  """Spearman rho of (x, y) (scipy.stats) with a percentile bootstrap 95% interval over
  points; with y_null also rho(x, y_null) and the paired difference rho - rho_null."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  rho = lambda a, b: float(scipy.stats.spearmanr(a, b).statistic)
  out = {"rho": rho(x, y), "n": int(len(x))}
  rng = np.random.default_rng(seed)
  boots, diffs = [], []
  for _ in range(int(n_boot)):
    i = rng.integers(0, len(x), len(x))
    if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
      continue
    boots.append(rho(x[i], y[i]))
    if y_null is not None and np.ptp(np.asarray(y_null)[i]) > 0:
      diffs.append(boots[-1] - rho(x[i], np.asarray(y_null)[i]))
  out["ci"] = [float(v) for v in np.percentile(boots, [2.5, 97.5])] if boots else [np.nan] * 2
  if y_null is not None:
    out["rho_null"] = rho(x, y_null)
    out["diff_ci"] = ([float(v) for v in np.percentile(diffs, [2.5, 97.5])] if diffs
                      else [np.nan] * 2)
  return out


def logfit_boot(n_params, values_SK, n_boot: int, seed: int) -> dict:
  """OLS fit value = a + b ln(N) of the per-size seed means; a bootstrap 95% interval of b
  resampling seeds within each size."""
  x = np.log(np.asarray(n_params, np.float64))
  vals = [np.asarray(v, np.float64) for v in values_SK]
  means = np.array([v.mean() for v in vals])
  b, a = np.polyfit(x, means, 1)
  r2 = 1 - np.sum((means - (a + b * x)) ** 2) / max(np.sum((means - means.mean()) ** 2), 1e-300)
  if min(len(v) for v in vals) < 2:
    return {"slope": float(b), "intercept": float(a), "r2": float(r2),
            "ci": [float("nan")] * 2, "means": means.tolist()}
  rng = np.random.default_rng(seed)
  boots = [np.polyfit(x, [v[rng.integers(0, len(v), len(v))].mean() for v in vals], 1)[0]
           for _ in range(int(n_boot))]
  return {"slope": float(b), "intercept": float(a), "r2": float(r2),
          "ci": [float(v) for v in np.percentile(boots, [2.5, 97.5])], "means": means.tolist()}


# ------------------------------------------------------------------ verdicts

def _verdict(claim: str, verdict: str, reason: str, number: dict) -> dict:
  return {"claim": claim, "direction": DIRECTIONS[claim], "verdict": verdict,
          "reason": reason, "number": number}


def shift_excess(alpha0_KT, width_KT, null_alpha0_KT, null_width_KT):
  """Per seed: the left shift of alpha0 from the first to the last checkpoint beyond the
  null's, -(a_T - a_0) + (na_T - na_0), and the widening beyond the null's,
  (w_T - w_0) - (nw_T - nw_0)."""
  d = lambda v: np.asarray(v, np.float64)[:, -1] - np.asarray(v, np.float64)[:, 0]
  return d(null_alpha0_KT) - d(alpha0_KT), d(width_KT) - d(null_width_KT)


def claim1(sizes: list[dict], z: float = 2.0) -> dict:
  """sizes (increasing): {'name', 'params', 'left': per-seed, 'widen': per-seed}."""
  stats = [{"name": s["name"], "params": s["params"], "left": mean_se(s["left"]),
            "widen": mean_se(s["widen"])} for s in sizes]
  big, small = stats[-1], stats[0]
  sb = [beyond(*big["left"], z), beyond(*big["widen"], z)]
  ss = [beyond(*small["left"], z), beyond(*small["widen"], z)]
  num = {"largest_left_shift": big["left"], "largest_widening": big["widen"],
         "smallest_left_shift": small["left"], "smallest_widening": small["widen"],
         "per_size": stats, "z": z}
  if not all(np.isfinite([big["left"][1], big["widen"][1]])):
    return _verdict("claim1", INCONCLUSIVE, "one sampling seed: no error bar", num)
  if -1 in sb:
    which = "alpha0 moves right" if sb[0] == -1 else "the spectrum narrows"
    return _verdict("claim1", NOT_SUPPORTED, f"largest model: {which} relative to the null "
                    f"(beyond {z} SE)", num)
  if sb != [1, 1]:
    return _verdict("claim1", INCONCLUSIVE, f"largest model's left shift / widening within "
                    f"{z} SE of the null's", num)
  if ss == [1, 1]:
    return _verdict("claim1", NOT_SUPPORTED, "the smallest model also shifts left and widens "
                    f"beyond the null ({z} SE): no size dependence", num)
  return _verdict("claim1", SUPPORTED, f"largest model shifts left and widens beyond the "
                  f"null ({z} SE); the smallest does not", num)


def claim2(pooled: dict, per_size: list[dict]) -> dict:
  """pooled, per_size: spearman_boot(E, task accuracy, y_null=null E) outputs."""
  num = {"pooled": pooled, "per_size": per_size}
  lo, hi = pooled["ci"]
  if not np.isfinite([lo, hi]).all():
    return _verdict("claim2", INCONCLUSIVE, "too few distinct points for a bootstrap", num)
  if hi < 0:
    return _verdict("claim2", NOT_SUPPORTED, f"pooled Spearman {pooled['rho']:.2f}, 95% CI "
                    f"[{lo:.2f}, {hi:.2f}] below 0", num)
  if lo <= 0:
    return _verdict("claim2", INCONCLUSIVE, f"pooled Spearman {pooled['rho']:.2f}, 95% CI "
                    f"[{lo:.2f}, {hi:.2f}] includes 0", num)
  dlo, dhi = pooled.get("diff_ci", [np.nan, np.nan])
  if not dlo > 0:
    return _verdict("claim2", INCONCLUSIVE, f"E tracks accuracy (Spearman {pooled['rho']:.2f}, "
                    f"CI [{lo:.2f}, {hi:.2f}]) but the i.i.d. null's E does as well (rho "
                    f"{pooled.get('rho_null', np.nan):.2f}; difference CI [{dlo:.2f}, "
                    f"{dhi:.2f}]): training time drives both", num)
  return _verdict("claim2", SUPPORTED, f"pooled Spearman {pooled['rho']:.2f}, CI [{lo:.2f}, "
                  f"{hi:.2f}], above the null's {pooled['rho_null']:.2f}", num)


def threshold(params, excess_SK, z: float = 2.0) -> dict:
  """Sizes whose last-checkpoint E exceeds the null's beyond z SE; a threshold when those
  are exactly the sizes above some size (and not all, not none)."""
  sig = [beyond(*mean_se(v), z) == 1 for v in excess_SK]
  k = next((i for i, s in enumerate(sig) if s), None)
  found = k is not None and k > 0 and all(sig[k:]) and not any(sig[:k])
  return {"above_null": sig, "threshold": bool(found),
          "threshold_params": int(params[k]) if found else None}


def claim3(fit: dict, thresh: dict) -> dict:
  """fit: logfit_boot of E at the last checkpoint vs non-embedding parameters."""
  lo, hi = fit["ci"]
  num = {"fit": fit, "threshold": thresh}
  t = (f"threshold at {thresh['threshold_params']} parameters" if thresh["threshold"]
       else "no size threshold")
  s = f"slope dE/dln(N) {fit['slope']:.3g}, 95% CI [{lo:.3g}, {hi:.3g}]; {t}"
  if not np.isfinite([lo, hi]).all():
    return _verdict("claim3", INCONCLUSIVE, f"{s}: one sampling seed, no interval", num)
  if lo > 0:
    return _verdict("claim3", SUPPORTED, s, num)
  if hi < 0:
    return _verdict("claim3", NOT_SUPPORTED, s + " (E falls with size)", num)
  return _verdict("claim3", INCONCLUSIVE, s + " (includes 0)", num)


def claim5(dedup_diff_K, ft_dE_K, ft_dacc: float, z: float = 2.0) -> dict:
  """dedup_diff_K: per seed E_last(corpus as is) - E_last(duplicated corpus);
  ft_dE_K: per seed E(end) - E(start) of the contaminated fine-tune; ft_dacc its change in
  task accuracy. Both parts must hold for 'supported'; either opposite: 'not supported'."""
  dd, fe = mean_se(dedup_diff_K), mean_se(ft_dE_K)
  num = {"dedup_minus_dup_E": dd, "finetune_dE": fe, "finetune_dacc": float(ft_dacc), "z": z}
  a, b = beyond(*dd, z), beyond(*fe, z)
  parts = (f"E(as is) - E(duplicated) = {dd[0]:.3g} +- {dd[1]:.2g}; contaminated fine-tune "
           f"dE = {fe[0]:.3g} +- {fe[1]:.2g}, d(accuracy) = {ft_dacc:+.3f}")
  if not np.isfinite([dd[1], fe[1]]).all():
    return _verdict("claim5", INCONCLUSIVE, f"{parts}: one sampling seed, no error bar", num)
  if a == -1 or b == 1:
    return _verdict("claim5", NOT_SUPPORTED, f"{parts}: opposite to the reported direction",
                    num)
  if not ft_dacc < 0:
    return _verdict("claim5", INCONCLUSIVE, f"{parts}: the contaminated fine-tune did not "
                    f"lower accuracy", num)
  if a == 1 and b == -1:
    return _verdict("claim5", SUPPORTED, parts, num)
  return _verdict("claim5", INCONCLUSIVE, f"{parts}: within {z} SE of no change", num)
