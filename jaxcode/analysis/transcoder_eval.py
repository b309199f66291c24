"""Evaluation of trained transcoders (per-layer stacks of the SAE family, or a CLT) on
held-out paired activations, per covered layer.

For every layer l (raw units, sums over the whole held-out sample before any ratio, as
jaxcode.analysis.sae_eval does): fvu = sum ||y - y_hat||^2 / sum ||y - mean y||^2, l0 (mean
active latents per token), dead_fraction (latents that never fire on the sample), mse per
element, cosine and l2_ratio of y_hat against y.  For a stack with a sweep, every dictionary
of a layer is reported (`label`).  On a planted source (jaxcode.data.synthetic.
PlantedTranscoder) also the recovery of the ground truth: mean over planted features of the
best cosine between its encoder direction and a learned encoder row (|cosine| for signed
features, read by a latent per sign), between its decoder (concatenated over output layers
for a CLT) and a learned decoder, and the skip map's relative error
||W_skip - A|| / ||A|| in raw units.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis import sae_eval
from jaxcode.data.synthetic import mean_max_cosine
from jaxcode.models import clt as clt_lib
from jaxcode.models import sae as sae_lib

_KEEP = ("fvu", "l0", "dead_fraction", "mse", "cosine", "l2_ratio", "explained_variance")


def _metrics(y, y_hat, f) -> dict:
  m = sae_eval.reconstruction_metrics([(y, y_hat, f)], y.shape[-1], f.shape[-1])
  m["fvu"] = 1.0 - m["explained_variance"]
  return {k: float(m[k]) for k in _KEEP}


def _abs_best_cosine(true_FD, learned_MD) -> float:
  t = true_FD / np.linalg.norm(true_FD, axis=1, keepdims=True)
  l = learned_MD / np.maximum(np.linalg.norm(learned_MD, axis=1, keepdims=True), 1e-12)
  return float(np.mean(np.max(np.abs(t @ l.T), axis=1)))


def _recovery(planted, l: int, w_enc_MD, w_dec_MX, skip_raw=None) -> dict:
  """Planted ground truth of layer index l against learned encoder rows and decoders."""
  enc = planted.encoders[l]
  dec = planted.decoders[l].reshape(planted.n_features, -1)
  out = {"planted_encoder_cosine": (_abs_best_cosine(enc, w_enc_MD) if planted.signed
                                    else mean_max_cosine(enc, w_enc_MD)),
         "planted_decoder_cosine": mean_max_cosine(dec, w_dec_MX)}
  if skip_raw is not None and planted.skip_maps is not None:
    a = planted.skip_maps[l]
    out["planted_skip_rel_error"] = float(np.linalg.norm(skip_raw - a) / np.linalg.norm(a))
    out["planted_skip_rel_error_identifiable"] = _skip_identifiable_error(planted, l, skip_raw)
  return out


def _skip_identifiable_error(planted, l: int, skip_raw) -> float:
  """||W_skip - A|| / ||A|| after removing the part no learner can pin down: a feature whose
  code is affine in its input can hand any multiple of its own decoder to the skip (skip +
  lam W_i e_i^T with the latent's code and decoder rescaled reconstructs the same y exactly),
  so per feature i the component of (W_skip - A) e_i along W_i is dropped.  What remains is
  the error on the complement of the features' span and across features."""
  a = planted.skip_maps[l].astype(np.float64)
  e = planted.encoders[l].astype(np.float64)                    # [F, d_in] orthonormal rows
  w = planted.decoders[l][:, 0].astype(np.float64)              # [F, d_out]
  d = np.asarray(skip_raw, np.float64) - a
  de = d @ e.T                                                   # [d_out, F]
  de = de - w.T * (np.sum(de * w.T, 0) / np.sum(w.T ** 2, 0))
  rest = d - (d @ e.T) @ e + de @ e                              # off-span part + cleaned span
  return float(np.linalg.norm(rest) / np.linalg.norm(a))


def _in_batches(fn, arrays, batch: int):
  outs = [fn(*(jnp.asarray(a[i:i + batch]) for a in arrays))
          for i in range(0, len(arrays[0]), batch)]
  return [np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0]))]


def evaluate_stack(cfg: sae_lib.SAEConfig, params, aux, held: dict, labels, batch: int = 1024,
                   planted=None) -> list[dict]:
  """Per dictionary i of a transcoder stack (layer sources[i]): metrics on held pairs."""
  out = []
  for i, src in enumerate(cfg.sources):
    one = single(cfg, i)
    p, a = sae_lib.select(params, i), sae_lib.select(aux, i)

    def fwd(x, p=p, a=a, one=one):
      f = sae_lib.encode(one, p, a, x)
      return f, sae_lib.decode(one, p, a, f, x_BD=x)
    f, y_hat = _in_batches(jax.jit(fwd), [held["x"][:, src]], batch)
    rec = {"label": labels[i], "layer_index": int(src), "k": int(cfg.ks[i]),
           "sparsity_coef": float(cfg.coefs[i]),
           **_metrics(held["y"][:, src], y_hat, f)}
    if planted is not None:
      skip = (np.asarray(p["W_skip"]) * float(a["norm_scale"]) / float(a["norm_scale_out"])
              if cfg.skip else None)
      rec.update(_recovery(planted, src, np.asarray(p["W_enc_MD"]), np.asarray(p["W_dec"]),
                           skip))
    out.append(rec)
  return out


def single(cfg: sae_lib.SAEConfig, i: int) -> sae_lib.SAEConfig:
  """Dictionary i of a stack as a single-dictionary config (its own k and coefficient)."""
  return dataclasses.replace(cfg, k=int(cfg.ks[i]), sparsity_coef=float(cfg.coefs[i]),
                             sources=())


def evaluate_clt(cfg: clt_lib.CLTConfig, params, aux, held: dict, batch: int = 1024,
                 planted=None) -> list[dict]:
  """Per layer of one CLT (no stack axis): metrics on held pairs."""
  def fwd(x):
    f = clt_lib.encode(cfg, params, aux, x)
    return f, clt_lib.decode(cfg, params, aux, f, x)
  f, y_hat = _in_batches(jax.jit(fwd), [held["x"]], batch)
  out = []
  for l in range(cfg.n_layers):
    rec = {"label": cfg.architecture, "layer_index": l, "k": int(cfg.k),
           "sparsity_coef": float(cfg.sparsity_coef),
           **_metrics(held["y"][:, l], y_hat[:, l], f[:, l])}
    if cfg.architecture == "batchtopk":
      rec["inference_threshold"] = float(np.asarray(aux["threshold"])[l])
    if planted is not None:
      s_out = np.asarray(aux["norm_scale_out"])[l:]
      w = np.asarray(params[f"W_dec_{l}"]) / s_out[None, :, None]    # raw units per layer
      rec.update(_recovery(planted, l, np.asarray(params["W_enc_LMD"][l]),
                           w.reshape(w.shape[0], -1)))
    out.append(rec)
  return out
