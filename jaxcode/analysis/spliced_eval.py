"""Spliced-in evaluation: the LM run with a reconstruction replacing one hookpoint's activation.

`spliced_eval(lm, input_ids, attention_mask, hookpoint, reconstruct)` runs three forwards
on every batch, in one jitted function: clean; with `reconstruct(x_ND) -> x_hat_ND` (an
SAE's encode -> decode) replacing the activation at `hookpoint`; and with zeros there
(zero ablation). The replacement happens only at splice positions: attended tokens that
are not special (BOS/CLS/SEP/EOS inserted by the tokenizer, padding), the positions an
SAE trained on our activation cache has seen; elsewhere the clean activation flows on.

Reported, by the model's kind (`mode`):
- "causal" (GPT-2, GPT-NeoX): next-token cross-entropy over pairs of attended tokens in
  the three conditions, CE-loss-recovered (ce_zero - ce_sae) / (ce_zero - ce_clean), the
  KL divergence KL(p_clean || p_x) of the next-token distributions and the KL score
  (kl_zero - kl_sae) / kl_zero (SAELens' evals definitions, see notes/sae.md).
- "mlm" (BERT with a masked-LM head): a fraction `mask_prob` of the splice positions
  (chosen by `seed`) is replaced by [MASK], and the same quantities are computed on the
  masked-LM logits at those positions, predicting the original tokens.
- "embedding" (BERT without a head, e.g. all-MiniLM-L6-v2): no LM loss exists, so we
  report what the model is used for, the mean-pooled L2-normalised sentence embedding:
  its cosine with the clean embedding with the reconstruction and zero-ablated, the
  embedding-recovered score (d_zero - d_sae) / d_zero with d = 1 - cosine, and the
  relative squared error of the last hidden states.
In every mode also the reconstruction's explained variance and MSE at the splice positions.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxcode.models.lm import parse_hookpoints
from jaxcode.errors import ConfigError

MODES = ("auto", "causal", "mlm", "embedding")


def splice_positions(attention_mask, special=None) -> np.ndarray:
  """[B, T] bool: attended positions that are not special tokens."""
  m = np.asarray(attention_mask).astype(bool)
  return m if special is None else m & ~np.asarray(special, bool)


def mlm_positions(splice_BT: np.ndarray, mask_prob: float, seed: int) -> np.ndarray:
  """[B, T] bool: each splice position independently with probability mask_prob (>= 1 per row
  that has a splice position), from a NumPy generator seeded with `seed`."""
  rng = np.random.default_rng(seed)
  pick = (rng.random(splice_BT.shape) < mask_prob) & splice_BT
  for b in np.nonzero(splice_BT.any(1) & ~pick.any(1))[0]:
    pick[b, rng.choice(np.nonzero(splice_BT[b])[0])] = True
  return pick


def resolve_mode(lm, mode: str) -> str:
  if mode not in MODES:
    raise ConfigError(f"mode={mode!r}: expected one of {MODES}")
  kind = "mlm" if lm.model_type == "bert" else "causal"
  if mode == "auto":
    return kind if lm.has_logits else "embedding"
  if mode != "embedding" and mode != kind:
    raise ConfigError(f"mode={mode!r} for model_type={lm.model_type!r}: expected {kind!r} or "
                      "'embedding'")
  if mode != "embedding" and not lm.has_logits:
    raise ConfigError(f"mode={mode!r}: the checkpoint in {lm.model_dir!r} has no LM head; "
                      "use mode='embedding'")
  return mode


def _hoisted(reconstruct: Callable, n: int, d: int):
  """(fn(consts, x_ND), consts): the callable's closed-over arrays (SAE weights) become
  arguments of the jitted evaluation instead of constants baked into it."""
  closed = jax.make_jaxpr(reconstruct)(jnp.zeros((n, d), jnp.float32))
  if len(closed.out_avals) != 1 or closed.out_avals[0].shape != (n, d):
    raise ConfigError(f"reconstruct returned {[a.shape for a in closed.out_avals]} for input "
                      f"{(n, d)}: expected one array of the input's shape")

  def fn(consts, x_ND):
    return jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(closed.jaxpr, consts))(x_ND)[0]
  return fn, list(closed.consts)


def _log_softmax(logits):
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _ce_kl_sums(logits, clean_logp, targets, weight):
  """Sums over weighted positions of CE(target) and KL(p_clean || p)."""
  logp = _log_softmax(logits)
  ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  kl = jnp.sum(jnp.exp(clean_logp) * (clean_logp - logp), axis=-1)
  return jnp.sum(ce * weight), jnp.sum(kl * weight)


def _pooled(h_BTD, mask_BT):
  m = mask_BT[..., None].astype(jnp.float32)
  e = jnp.sum(h_BTD.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def make_eval_fn(lm, hookpoint: str, recon_fns, mode: str):
  """The jitted (params, consts, ids, mask, splice, targets, weight) -> dict of sums.

  recon_fns: {name: fn(consts, x_ND)}; one clean and one zero-ablated forward are shared by
  all reconstructions (a sweep of SAEs costs one spliced forward each).
  """
  module, n_layers = lm.module, lm.n_layers
  out_name = "final" if mode == "embedding" else "logits"

  def run(params, ids, mask, edit):
    edits = None if edit is None else {hookpoint: edit}
    rec = module.apply({"params": params}, ids, mask, n_layers, True, edits=edits)
    return rec[hookpoint], rec[out_name]

  def fn(params, consts, ids_BT, mask_BT, splice_BT, targets_BT, weight_BT):
    sp = splice_BT[..., None]

    def spliced(recon, c):
      def edit(x_BTD):
        B, T, D = x_BTD.shape
        x_hat = recon(c, x_BTD.reshape(B * T, D).astype(jnp.float32)).reshape(B, T, D)
        return jnp.where(sp, x_hat.astype(x_BTD.dtype), x_BTD)
      return edit

    x, out_clean = run(params, ids_BT, mask_BT, None)
    _, out_zero = run(params, ids_BT, mask_BT, lambda x: jnp.where(sp, jnp.zeros_like(x), x))
    x = x.astype(jnp.float32)
    w = splice_BT.astype(jnp.float32)[..., None]
    s = {"n_splice": jnp.sum(splice_BT), "x_sum": jnp.sum(x * w, (0, 1)),
         "x_sq": jnp.sum(x * x * w)}
    outs = {"zero": out_zero}
    for name, recon in recon_fns.items():
      x_hat, outs[("sae", name)] = run(params, ids_BT, mask_BT, spliced(recon, consts[name]))
      s[f"err_sq/{name}"] = jnp.sum((x - x_hat.astype(jnp.float32)) ** 2 * w)
    if mode == "embedding":
      e_c = _pooled(out_clean, mask_BT)
      rows = (jnp.sum(splice_BT, 1) > 0).astype(jnp.float32)
      hm = mask_BT.astype(jnp.float32)[..., None]
      s["n_rows"] = jnp.sum(rows)
      s["h_sq"] = jnp.sum(out_clean.astype(jnp.float32) ** 2 * hm)
      for key, out in outs.items():
        k = key if isinstance(key, str) else f"sae/{key[1]}"
        s[f"cos_{k}"] = jnp.sum(jnp.sum(e_c * _pooled(out, mask_BT), -1) * rows)
        s[f"h_err_{k}"] = jnp.sum((out.astype(jnp.float32) - out_clean.astype(jnp.float32))
                                  ** 2 * hm)
      return s
    clean_logp = _log_softmax(out_clean)
    s["n_pred"] = jnp.sum(weight_BT)
    s["ce_clean"], _ = _ce_kl_sums(out_clean, clean_logp, targets_BT, weight_BT)
    for key, out in outs.items():
      k = key if isinstance(key, str) else f"sae/{key[1]}"
      s[f"ce_{k}"], s[f"kl_{k}"] = _ce_kl_sums(out, clean_logp, targets_BT, weight_BT)
    return s

  return jax.jit(fn)


def _prepare(lm, ids, mask, splice, mode, mask_prob, seed, mask_token_id):
  """Model inputs, prediction targets and weights per mode (all numpy)."""
  if mode == "causal":
    # position t predicts token t+1; both must be attended (padding is never a target)
    targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], 1)
    weight = np.concatenate([mask[:, :-1] & mask[:, 1:], np.zeros_like(mask[:, :1])], 1)
    return ids, targets, weight.astype(np.float32), {}
  if mode == "mlm":
    if mask_token_id is None:
      mask_token_id = getattr(lm.tokenizer, "mask_token_id", None)
    if mask_token_id is None:
      raise ConfigError("mode='mlm': the tokenizer has no [MASK] token; pass mask_token_id")
    if not 0.0 < mask_prob <= 1.0:
      raise ConfigError(f"mask_prob={mask_prob}: expected a value in (0, 1]")
    picked = mlm_positions(splice, mask_prob, seed)
    masked = np.where(picked, mask_token_id, ids).astype(np.int32)
    return masked, ids, picked.astype(np.float32), {"n_masked": int(picked.sum())}
  return ids, np.zeros_like(ids), np.zeros(ids.shape, np.float32), {}


def token_inputs(input_ids, attention_mask, special=None):
  """(ids, mask) as int32 [N, T] arrays, checked: equal 2-D shapes, special of that shape."""
  ids = np.asarray(input_ids, np.int32)
  mask = np.asarray(attention_mask, np.int32)
  if ids.ndim != 2 or mask.shape != ids.shape:
    raise ConfigError(f"input_ids {ids.shape} / attention_mask {mask.shape}: expected equal "
                      "[batch, seq] shapes")
  if special is not None and np.shape(special) != ids.shape:
    raise ConfigError(f"special of shape {np.shape(special)}: expected {ids.shape}")
  return ids, mask


def spliced_eval(lm, input_ids, attention_mask, hookpoint: str,
                 reconstruct: Callable | Mapping[str, Callable], *,
                 special=None, batch_size: int = 8, mode: str = "auto", mask_prob: float = 0.15,
                 seed: int = 0, mask_token_id: int | None = None) -> dict:
  """Clean vs reconstruction-spliced vs zero-ablated evaluation of `lm` (see module doc).

  input_ids, attention_mask: [N, T] (e.g. a Packed corpus's); special: optional [N, T]
  bool of tokenizer-added tokens (Packed.special), never spliced. reconstruct: a
  function [n, d] float32 -> [n, d] (jax-traceable; closed-over arrays such as SAE
  weights are passed to the jitted evaluation as arguments), or a dict {name: function}
  evaluated in one pass (the clean and zero-ablated forwards are shared).
  Returns a dict of floats (keys per mode in the module docstring); for a dict of
  reconstructions, {name: that dict}.
  """
  names, _, _ = parse_hookpoints([hookpoint], lm.n_layers)
  if hookpoint in ("logits",):
    raise ConfigError("hookpoint 'logits': expected a hookpoint inside the model")
  mode = resolve_mode(lm, mode)
  ids, mask = token_inputs(input_ids, attention_mask, special)
  if batch_size < 1:
    raise ConfigError(f"batch_size={batch_size}: expected a positive integer")
  splice = splice_positions(mask, special)
  if not splice.any():
    raise ConfigError("no splice positions: every token is padding or special")
  model_ids, targets, weight, extra = _prepare(lm, ids, mask, splice, mode, mask_prob, seed,
                                               mask_token_id)
  if mode != "embedding" and weight.sum() == 0:
    raise ConfigError("no positions to score: sequences need at least two attended tokens")
  B, T = min(batch_size, ids.shape[0]), ids.shape[1]
  d = lm.hookpoint_width(hookpoint)
  recons = dict(reconstruct) if isinstance(reconstruct, Mapping) else {"": reconstruct}
  if not recons or not all(callable(f) for f in recons.values()):
    raise ConfigError("reconstruct: expected a function x -> x_hat or a non-empty dict of them")
  hoisted = {k: _hoisted(f, B * T, d) for k, f in recons.items()}
  fn = make_eval_fn(lm, hookpoint, {k: h[0] for k, h in hoisted.items()}, mode)
  consts = {k: h[1] for k, h in hoisted.items()}

  totals: dict = {}
  for b0 in range(0, ids.shape[0], B):
    sl = slice(b0, b0 + B)
    parts = [model_ids[sl], mask[sl], splice[sl], targets[sl], weight[sl]]
    pad = B - parts[0].shape[0]
    if pad:  # fixed shapes: pad with fully masked rows (no splice, no weight)
      parts = [np.concatenate([p, np.zeros((pad,) + p.shape[1:], p.dtype)]) for p in parts]
    out = fn(lm.params, consts, *(jnp.asarray(p) for p in parts))
    for k, v in jax.device_get(out).items():
      totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
  per = {k: summarise(totals, k, mode, hookpoint, extra) for k in recons}
  return per if isinstance(reconstruct, Mapping) else per[""]


def _ratio(num, den):
  return float(num / den) if den != 0 else float("nan")


def summarise(t: dict, name: str, mode: str, hookpoint: str, extra: dict) -> dict:
  """Means and scores of one reconstruction from the summed totals."""
  n = float(t["n_splice"])
  mean = t["x_sum"] / n
  total_var = float(t["x_sq"]) - n * float(np.sum(mean ** 2))
  err = float(t[f"err_sq/{name}"])
  out = {"mode": mode, "hookpoint": hookpoint, "n_splice_tokens": int(n),
         "recon_mse": err / (n * mean.size),
         "recon_explained_variance": 1.0 - _ratio(err, total_var)}
  out.update(extra)
  sae = f"sae/{name}"
  if mode == "embedding":
    rows = float(t["n_rows"])
    cos_sae, cos_zero = float(t[f"cos_{sae}"]) / rows, float(t["cos_zero"]) / rows
    out.update(n_sequences=int(rows), cos_sae=cos_sae, cos_zero=cos_zero,
               embedding_recovered=_ratio((1 - cos_zero) - (1 - cos_sae), 1 - cos_zero),
               final_rel_err_sae=_ratio(float(t[f"h_err_{sae}"]), float(t["h_sq"])),
               final_rel_err_zero=_ratio(float(t["h_err_zero"]), float(t["h_sq"])))
    return out
  n_pred = float(t["n_pred"])
  ce = {k: float(t[f"ce_{v}"]) / n_pred for k, v in (("clean", "clean"), ("sae", sae),
                                                       ("zero", "zero"))}
  kl = {k: float(t[f"kl_{v}"]) / n_pred for k, v in (("sae", sae), ("zero", "zero"))}
  out.update(n_predictions=int(n_pred), ce_clean=ce["clean"], ce_sae=ce["sae"],
             ce_zero=ce["zero"], ce_delta=ce["sae"] - ce["clean"],
             ce_recovered=_ratio(ce["zero"] - ce["sae"], ce["zero"] - ce["clean"]),
             kl_sae=kl["sae"], kl_zero=kl["zero"],
             kl_score=_ratio(kl["zero"] - kl["sae"], kl["zero"]))
  return out


def sae_reconstructor(cfg, params, aux) -> Callable:
  """x_ND -> x_hat_ND of one trained SAE (jaxcode.models.sae: its params and aux state, e.g.
  sae.select(state.params, i) of a sweep; the input normalisation is applied and undone)."""
  from jaxcode.models import sae as sae_lib
  return lambda x: sae_lib.decode(cfg, params, aux, sae_lib.encode(cfg, params, aux, x))
