"""Cross-layer transcoders (CLTs) as pure functions on plain parameter pytrees.

A CLT over L consecutive layers reads each layer's MLP input x^l and reconstructs every
layer's MLP output y^m from the features of all earlier-or-equal layers (Ameisen et al. 2025,
"Circuit Tracing"; notes/circuits.md section 2):

    a^l   = sigma(x^l W_enc^l^T + b_enc^l)                   one encoder of M features per layer
    y^m   = sum_{l <= m} a^l W_dec^{l->m} + b_dec^m [+ x^m W_skip^m^T]

Parameters of one CLT (every leaf also carries a leading dictionary axis of size 1, as the SAE
family's, so the training loop, per-dictionary clipping and sharding rules treat both alike):
W_enc_LMD [L, M, D_in] (latent-major, as sae.py), b_enc [L, M], ``W_dec_{l}`` [M, L-l, D_out]
for l = 0..L-1 (decoders grouped by source layer: circuit-tracer's layout, slot j -> layer
l+j), b_dec [L, D_out], threshold [L, M] (jumprelu) and W_skip [L, D_out, D_in] (skip; zero
at init, never penalised).  On a mesh every feature's encoder rows and all its decoders sit on
the same shard of `model` (the M axis of each), so the decoder norm over all output layers is
shard-local; tokens are split over `data`.

Architectures (the SAE family's activation functions, jaxcode.models.sae):

* ``relu``      ReLU codes; sparsity lam * sum_{l,i} a_i^l ||W_dec,i^l|| (L1 weighted by the
                decoder norm over all output layers).
* ``jumprelu``  JumpReLU codes (straight-through rectangle kernel); the Circuit Tracing paper's
                penalty lam * sum tanh(c a_i^l ||W_dec,i^l||) plus the optional pre-activation
                loss lam_P * sum ReLU(theta_i^l - h_i^l) ||W_dec,i^l|| (pre_act_coef; 0: off).
* ``topk``      k features per layer and token; AuxK on dead features reconstructing the
                residual of every layer they write to.  Sparse path (sparse_decode): the
                decoders of the k active features of a layer are gathered and summed
                (sae.py's custom VJPs on [M, (L-l) D_out] views), at B k D cost per layer.
* ``batchtopk`` the k*B largest ReLU(h) of each layer over the batch; AuxK; an EMA of each
                layer's smallest kept activation is that layer's JumpReLU inference threshold
                (``encode`` uses it, exports are JumpReLU), and ``jumprelu_thresholds`` gives
                the thresholds that match the training L0 on a sample.

Loss (normalised units; every term a mean over tokens, so lambda does not depend on the batch
size): sum_m ||y^m - y_hat^m||^2 + sparsity (+ aux_alpha AuxK).  Inputs and targets are
normalised per layer (scalars s_in[l], s_out[l] estimated before training, as sae.py does per
dictionary); ``decode`` and the exports undo them.  Initialisation as the SAE family's: random
encoder rows and concatenated decoder rows of norm dec_init_norm, b_dec at the mean target,
thresholds at jump_threshold_init.  topk/batchtopk keep every feature's concatenated decoder
at unit norm (gradient projected, rows renormalised after each update).

Shapes: B batch, L layers, M features per layer, D width, K kept features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxcode.errors import ConfigError, finite, positive_int
from jaxcode.models import sae as sae_lib
from jaxcode.parallel import MODEL

ARCHITECTURES = ("relu", "jumprelu", "topk", "batchtopk")
TOPK_FAMILY = ("topk", "batchtopk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLTConfig:
  """Static description of one CLT; built from configs/transcoder.py's block by
  jaxcode.pipeline.transcoder (the defaults live there, once)."""
  architecture: str
  n_layers: int
  d_in: int
  d_out: int
  d_sae: int                 # features per layer
  k: int                     # topk: per layer and token; batchtopk: mean per layer and token
  sparsity_coef: float
  sparsity_warmup_steps: int
  k_aux: int | None          # AuxK features per layer (None: d_out // 2)
  aux_alpha: float
  dead_tokens: int
  jump_bandwidth: float
  jump_threshold_init: float
  tanh_c: float
  pre_act_coef: float
  threshold_ema: float
  threshold_ema_start: int
  dec_init_norm: float
  b_dec_init: str            # zeros | mean
  normalisation: str
  skip: bool
  sparse_decode: bool

  @property
  def k_aux_eff(self) -> int:
    return min(self.k_aux if self.k_aux is not None else self.d_out // 2, self.d_sae)

  @property
  def unit_decoder(self) -> bool:
    return self.architecture in TOPK_FAMILY

  @property
  def n_saes(self) -> int:   # the loop's per-dictionary axis
    return 1


def validate(cfg: CLTConfig, mesh: Mesh | None = None) -> None:
  """One-line ConfigError for a bad CLT config, before any compute."""
  if cfg.architecture not in ARCHITECTURES:
    raise ConfigError(f"clt architecture={cfg.architecture!r}: expected one of {ARCHITECTURES}")
  for name in ("n_layers", "d_in", "d_out", "d_sae", "dead_tokens"):
    positive_int(f"transcoder.{name}", getattr(cfg, name))
  if cfg.architecture in TOPK_FAMILY and not 0 < int(cfg.k) <= cfg.d_sae:
    raise ConfigError(f"transcoder.k={cfg.k}: expected 0 < k <= d_sae={cfg.d_sae}")
  for name in ("sparsity_coef", "pre_act_coef", "aux_alpha"):
    finite(f"transcoder.{name}", getattr(cfg, name), low=0.0)
  if cfg.architecture == "jumprelu":
    finite("transcoder.jump_bandwidth", cfg.jump_bandwidth, low=0.0, low_open=True)
  if cfg.b_dec_init not in ("zeros", "mean"):
    raise ConfigError(f"transcoder.b_dec_init={cfg.b_dec_init!r}: expected 'zeros' or 'mean' "
                      "for a CLT")
  if mesh is not None and cfg.d_sae % mesh.shape[MODEL]:
    raise ConfigError(f"mesh model axis {mesh.shape[MODEL]} does not divide the "
                      f"{cfg.d_sae} features per layer")


# ------------------------------------------------------------------ init

def _init_one(cfg: CLTConfig, key, b_dec_LD, s_in_L, s_out_L):
  L, M, D, O = cfg.n_layers, cfg.d_sae, cfg.d_in, cfg.d_out
  k_enc, k_dec = jax.random.split(key)
  w_enc = sae_lib._unit_rows(k_enc, (L, M, D), cfg.dec_init_norm)
  w_dec = sae_lib._unit_rows(k_dec, (M, L * (L + 1) // 2 * O), 1.0)
  norm = cfg.dec_init_norm / jnp.sqrt(L)   # per-source decoder blocks below share the norm
  params = {"W_enc_LMD": w_enc, "b_enc": jnp.zeros((L, M), jnp.float32),
            "b_dec": b_dec_LD.astype(jnp.float32)}
  off = 0
  for l in range(L):
    n = (L - l) * O
    blk = w_dec[:, off:off + n].reshape(M, L - l, O)
    params[f"W_dec_{l}"] = norm * blk / jnp.linalg.norm(blk.reshape(M, -1), axis=-1)[:, None,
                                                                                       None]
    off += n
  if cfg.skip:
    params["W_skip"] = jnp.zeros((L, O, D), jnp.float32)
  if cfg.architecture == "jumprelu":
    params["threshold"] = jnp.full((L, M), cfg.jump_threshold_init, jnp.float32)
  aux = {"coef": jnp.asarray(cfg.sparsity_coef, jnp.float32),
         "norm_scale": s_in_L.astype(jnp.float32), "norm_scale_out": s_out_L.astype(jnp.float32),
         "tokens_since_fired": jnp.zeros((L, M), jnp.int32),
         "threshold": jnp.full((L,), -1.0, jnp.float32)}
  if cfg.unit_decoder:
    params = _renormalise(cfg, params)
  return params, aux


def make_init(cfg: CLTConfig, sample) -> Callable[[jax.Array], tuple[Any, Any]]:
  """init(key) -> (params, aux) with a leading axis of size 1.  `sample` is a host batch
  {'x': [N, L, D_in], 'y': [N, L, D_out]}: the per-layer normalisation scalars and b_dec."""
  validate(cfg)
  x, y = np.asarray(sample["x"], np.float32), np.asarray(sample["y"], np.float32)
  check_batch(cfg, x, y)
  s_in = np.asarray([sae_lib.estimate_norm_scale(x[:, l], cfg.normalisation)
                     for l in range(cfg.n_layers)], np.float32)
  s_out = np.asarray([sae_lib.estimate_norm_scale(y[:, l], cfg.normalisation)
                      for l in range(cfg.n_layers)], np.float32)
  b_dec = ((y * s_out[None, :, None]).mean(0) if cfg.b_dec_init == "mean"
           else np.zeros((cfg.n_layers, cfg.d_out), np.float32))

  def init(key):
    p, a = _init_one(cfg, key, jnp.asarray(b_dec), jnp.asarray(s_in), jnp.asarray(s_out))
    return jax.tree.map(lambda v: v[None], (p, a))

  return init


def check_batch(cfg: CLTConfig, x, y) -> None:
  """Shapes of a batch {'x': [B, L, D_in], 'y': [B, L, D_out]} against the config."""
  for name, a, d in (("x", x, cfg.d_in), ("y", y, cfg.d_out)):
    if np.ndim(a) != 3 or tuple(np.shape(a)[1:]) != (cfg.n_layers, d):
      raise ConfigError(f"CLT batch '{name}' of shape {tuple(np.shape(a))}: expected "
                        f"[batch, {cfg.n_layers}, {d}]")


# ------------------------------------------------------------------ pieces

def decoders(cfg: CLTConfig, params) -> list[jax.Array]:
  """The L decoders [M, L-l, D_out], gradient-projected where decoders are unit-norm."""
  out = []
  for l in range(cfg.n_layers):
    w = params[f"W_dec_{l}"]
    if cfg.unit_decoder:
      w = sae_lib._project_rows(w.reshape(w.shape[0], -1)).reshape(w.shape)
    out.append(w)
  return out


def decoder_norms(cfg: CLTConfig, params) -> jax.Array:
  """||W_dec,i^l|| over all output layers, [L, M]."""
  return jnp.stack([jnp.sqrt(jnp.sum(params[f"W_dec_{l}"] ** 2, axis=(1, 2)))
                    for l in range(cfg.n_layers)])


def pre_activations(params, x_BLD) -> jax.Array:
  return jnp.einsum("bld,lmd->blm", x_BLD, params["W_enc_LMD"]) + params["b_enc"]


def _base(cfg: CLTConfig, params, x_BLD) -> jax.Array:
  """b_dec plus the skip term, [B, L, D_out] (or [L, D_out] without skip)."""
  if not cfg.skip:
    return params["b_dec"]
  return params["b_dec"] + jnp.einsum("bld,lod->blo", x_BLD, params["W_skip"])


def decode_dense(w_decs, a_BLM, base) -> jax.Array:
  """sum_{l <= m} a^l W_dec^{l->m} + base, [B, L, D_out]."""
  L = len(w_decs)
  y = jnp.zeros((a_BLM.shape[0], L, w_decs[0].shape[-1]), a_BLM.dtype) + base
  for l, w in enumerate(w_decs):
    y = y.at[:, l:].add(jnp.einsum("bm,mjd->bjd", a_BLM[:, l], w))
  return y


def _renormalise(cfg, params):
  out = dict(params)
  for l in range(cfg.n_layers):
    w = params[f"W_dec_{l}"]
    sq = jnp.einsum("mjd,mjd->m", w, w, precision=lax.Precision.HIGHEST)
    out[f"W_dec_{l}"] = w * lax.rsqrt(jnp.maximum(sq, 1e-24))[:, None, None]
  return out


# ------------------------------------------------------------------ codes

def _topk_layer(cfg, params, x_BD, pre_BM, l, k, mesh):
  """(vals [B, K], idx [B, K]) of layer l's per-token top-k; values carry gradients (sparse
  path: through sae.py's sparse VJP of the selected pre-activations)."""
  _, idx = sae_lib.topk_indices(pre_BM, k, mesh)
  if cfg.sparse_decode:
    vals = jnp.take_along_axis(lax.stop_gradient(pre_BM), idx, axis=1)
    vals = sae_lib._sparse_selected(params["W_enc_LMD"][l], params["b_enc"][l], x_BD, vals, idx,
                                    jnp.int32(k))
  else:
    vals = jnp.take_along_axis(pre_BM, idx, axis=1)
  return jax.nn.relu(vals), idx


def _topk_decode(cfg, w_decs, x_BLD, pre_BLM, params, base, mesh):
  """TopK codes of every layer and the reconstruction: dense scatter + matmuls, or the sparse
  gather-and-sum of the active decoders.  Returns (codes [B, L, M], y_hat [B, L, D])."""
  B, L = x_BLD.shape[0], cfg.n_layers
  codes, y = [], jnp.zeros((B, L, cfg.d_out), jnp.float32) + base
  for l in range(L):
    vals, idx = _topk_layer(cfg, params, x_BLD[:, l], pre_BLM[:, l], l, cfg.k, mesh)
    codes.append(sae_lib._scatter_dense(vals, idx, cfg.d_sae))
    w = w_decs[l]
    if cfg.sparse_decode:
      part = sae_lib._decode_sparse(w.reshape(w.shape[0], -1), vals, idx, jnp.int32(cfg.k),
                                    cfg.k)[0].reshape(B, L - l, cfg.d_out)
    else:
      part = jnp.einsum("bm,mjd->bjd", codes[-1], w)
    y = y.at[:, l:].add(part)
  return jnp.stack(codes, 1), y


def _batchtopk_codes(cfg, pre_BLM, mesh):
  """(z = ReLU(h), keep mask of each layer's k*B largest) [B, L, M]."""
  B = pre_BLM.shape[0]
  z = jax.nn.relu(pre_BLM)
  thr = jnp.stack([sae_lib.batch_kth_largest(z[:, l], cfg.k * B, cfg.k * B, mesh)
                   for l in range(cfg.n_layers)])
  keep = (pre_BLM >= thr[None, :, None]) & (pre_BLM > 0)
  return z, keep


def _threshold_ema(cfg, aux, z, keep, step):
  """Per layer: EMA of the smallest kept activation (started at the first), no gradient."""
  min_pos = jnp.min(jnp.where(keep, z, jnp.inf), axis=(0, 2))
  old = aux["threshold"]
  min_pos = jnp.where(jnp.isfinite(min_pos), min_pos, old)
  ema = jnp.where(old < 0, min_pos, cfg.threshold_ema * old + (1 - cfg.threshold_ema) * min_pos)
  return lax.stop_gradient(jnp.where(step >= cfg.threshold_ema_start, ema, old))


# ------------------------------------------------------------------ loss

def _auxk(cfg, w_decs, pre_BLM, resid_BLD, dead_LM, mesh, run):
  """AuxK: the stop-gradient residual of every layer reconstructed from the top k_aux dead
  features of each layer (decoded through all their output layers, without b_dec); dense
  path, inside a lax.cond that skips it while no feature is dead."""
  e = lax.stop_gradient(resid_BLD)
  ka = cfg.k_aux_eff

  def compute(w_decs, pre):
    codes = []
    for l in range(cfg.n_layers):
      masked = jnp.where(dead_LM[l][None, :], pre[:, l], -jnp.inf)
      _, idx = sae_lib.topk_indices(masked, ka, mesh)
      vals = jax.nn.relu(jnp.take_along_axis(pre[:, l], idx, axis=1))
      vals = vals * jnp.take(dead_LM[l], idx).astype(vals.dtype)
      codes.append(sae_lib._scatter_dense(vals, idx, cfg.d_sae))
    e_hat = decode_dense(w_decs, jnp.stack(codes, 1), 0.0)
    return jnp.mean(jnp.sum((e - e_hat) ** 2, axis=(1, 2)))

  return lax.cond(run, jax.checkpoint(compute), lambda *_: jnp.float32(0.0), w_decs, pre_BLM)


def _auxk_sparse(cfg, params, w_decs, x, pre_BLM, resid_BLD, dead_LM, mesh, run):
  """AuxK on the sparse path: only the choice of dead features sits in a lax.cond (no
  gradient); their values and decoders run over n = k_aux ranks when a feature is dead and
  n = 0 otherwise (sae.py's sparse VJPs), so a step without dead features costs nothing and
  no dense zero gradients."""
  e = lax.stop_gradient(resid_BLD)
  ka, B, L = cfg.k_aux_eff, x.shape[0], cfg.n_layers
  n = jnp.where(run, ka, 0).astype(jnp.int32)
  e_hat = jnp.zeros_like(e)
  for l in range(L):
    pre = lax.stop_gradient(pre_BLM[:, l])
    idx = lax.cond(run, lambda p: sae_lib._dead_topk(p, dead_LM[l], ka, mesh),
                   lambda p: jnp.zeros((B, ka), jnp.int32), pre)
    vals = sae_lib._sparse_selected(params["W_enc_LMD"][l], params["b_enc"][l], x[:, l],
                                    jnp.take_along_axis(pre, idx, axis=1), idx, n)
    vals = jax.nn.relu(vals) * jnp.take(dead_LM[l], idx).astype(vals.dtype)
    w = w_decs[l]
    part = sae_lib._decode_sparse(w.reshape(w.shape[0], -1), vals, idx, n, 0)[1]
    e_hat = e_hat.at[:, l:].add(part.reshape(B, L - l, cfg.d_out))
  return jnp.where(run, jnp.mean(jnp.sum((e - e_hat) ** 2, axis=(1, 2))), 0.0)


def _codes_and_recon(cfg, params, aux, x, pre, w_decs, base, dec_norm, lam, step, mesh):
  """(codes [B, L, M], y_hat, sparsity loss, new EMA thresholds or None)."""
  a = cfg.architecture
  if a == "topk":
    codes, y_hat = _topk_decode(cfg, w_decs, x, pre, params, base, mesh)
    return codes, y_hat, jnp.float32(0.0), None
  if a == "batchtopk":
    z, keep = _batchtopk_codes(cfg, pre, mesh)
    codes = z * keep.astype(z.dtype)
    return (codes, decode_dense(w_decs, codes, base), jnp.float32(0.0),
            _threshold_ema(cfg, aux, z, keep, step))
  if a == "relu":
    codes = jax.nn.relu(pre)
    sparsity = lam * jnp.mean(jnp.sum(codes * dec_norm, axis=(1, 2)))
    return codes, decode_dense(w_decs, codes, base), sparsity, None
  theta = params["threshold"]
  codes = sae_lib.jumprelu(jax.nn.relu(pre), theta, cfg.jump_bandwidth)
  sparsity = lam * jnp.mean(jnp.sum(jnp.tanh(cfg.tanh_c * codes * dec_norm), axis=(1, 2)))
  if cfg.pre_act_coef > 0:
    sparsity = sparsity + cfg.pre_act_coef * jnp.mean(
        jnp.sum(jax.nn.relu(theta - pre) * dec_norm, axis=(1, 2)))
  return codes, decode_dense(w_decs, codes, base), sparsity, None


def _loss_one(cfg: CLTConfig, params, aux, x_raw, y_raw, step, mesh):
  """Loss, metrics and new aux of one CLT (no leading axis) on one raw batch."""
  x = x_raw.astype(jnp.float32) * aux["norm_scale"][None, :, None]
  y = y_raw.astype(jnp.float32) * aux["norm_scale_out"][None, :, None]
  warm = 1.0 if cfg.sparsity_warmup_steps <= 0 else jnp.minimum(
      1.0, (step.astype(jnp.float32) + 1.0) / cfg.sparsity_warmup_steps)
  lam = aux["coef"] * warm
  w_decs = decoders(cfg, params)
  dec_norm = decoder_norms(cfg, params)[None]
  pre = pre_activations(params, x)
  dead = aux["tokens_since_fired"] >= cfg.dead_tokens
  codes, y_hat, sparsity, thr = _codes_and_recon(cfg, params, aux, x, pre, w_decs,
                                                 _base(cfg, params, x), dec_norm, lam, step,
                                                 mesh)
  err = jnp.sum((y - y_hat) ** 2, axis=(0, 2))                          # [L]
  mse = jnp.sum(err) / x.shape[0]
  aux_loss = jnp.float32(0.0)
  if cfg.architecture in TOPK_FAMILY and cfg.sparse_decode:
    aux_loss = _auxk_sparse(cfg, params, w_decs, x, pre, y - y_hat, dead, mesh, jnp.any(dead))
  elif cfg.architecture in TOPK_FAMILY:
    aux_loss = _auxk(cfg, w_decs, pre, y - y_hat, dead, mesh, jnp.any(dead))
  loss = mse + sparsity + cfg.aux_alpha * aux_loss
  new_aux = dict(aux)
  if thr is not None:
    new_aux["threshold"] = thr
  fired = jnp.any(codes > 0, axis=0)
  t = aux["tokens_since_fired"]
  new_aux["tokens_since_fired"] = jnp.where(
      fired, 0, jnp.minimum(t + x.shape[0], cfg.dead_tokens)).astype(jnp.int32)
  var = jnp.sum((y - jnp.mean(y, axis=0)) ** 2, axis=(0, 2))
  metrics = {"loss": loss, "mse": mse, "sparsity_loss": sparsity, "aux_loss": aux_loss,
             "sparsity_coef": lam, "l0": jnp.mean(jnp.sum(codes > 0, axis=2)),
             "fvu": jnp.sum(err) / jnp.sum(var),
             "dead_fraction": jnp.mean(new_aux["tokens_since_fired"] >= cfg.dead_tokens)}
  l0_L = jnp.mean(jnp.sum(codes > 0, axis=2), axis=0)
  for l in range(cfg.n_layers):
    metrics[f"fvu_layer_{l}"] = err[l] / var[l]
    metrics[f"l0_layer_{l}"] = l0_L[l]
  return loss, ({k: lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()},
                new_aux)


def make_loss(cfg: CLTConfig, mesh: Mesh | None = None):
  """loss(params, aux, batch, key, step) -> (loss, (metrics, new_aux)) for the training loop;
  batch {'x': [B, L, D_in], 'y': [B, L, D_out]} in raw units."""
  validate(cfg, mesh)

  def loss(params, aux, batch, key, step):
    del key
    x, y = batch["x"], batch["y"]
    chex.assert_shape(x, (None, cfg.n_layers, cfg.d_in))
    chex.assert_shape(y, (None, cfg.n_layers, cfg.d_out))
    l, (m, a) = _loss_one(cfg, sae_lib.select(params, 0), sae_lib.select(aux, 0), x, y,
                          jnp.asarray(step, jnp.int32), mesh)
    return l, (m, jax.tree.map(lambda v: v[None], a))

  return loss


def post_update(cfg: CLTConfig):
  """After each update: unit concatenated decoder norms (topk, batchtopk)."""
  def fn(params, aux):
    del aux
    if not cfg.unit_decoder:
      return params
    one = _renormalise(cfg, sae_lib.select(params, 0))
    return jax.tree.map(lambda v: v[None], one)
  return fn


def param_rules():
  """Feature-parallel sharding of stacked params [1, ...]: M over `model` in every encoder,
  decoder and threshold, so each feature's encoder and all its decoders share a shard."""
  return [(r"W_enc_LMD$", P(None, None, MODEL, None)), (r"W_dec_\d+$", P(None, MODEL, None, None)),
          (r"b_enc$", P(None, None, MODEL)), (r"threshold$", P(None, None, MODEL))]


def aux_rules():
  return [(r"tokens_since_fired$", P(None, None, MODEL))]


# ------------------------------------------------------------------ inference

def encode(cfg: CLTConfig, params, aux, x_BLD, *, mesh: Mesh | None = None,
           normalise: bool = True) -> jax.Array:
  """Inference codes [B, L, M] of one CLT (no leading axis) for raw inputs: topk per layer
  and token; batchtopk as JumpReLU at the per-layer EMA thresholds; jumprelu; relu."""
  x = x_BLD * aux["norm_scale"][None, :, None] if normalise else x_BLD
  pre = pre_activations(params, x)
  a = cfg.architecture
  if a == "topk":
    out = []
    for l in range(cfg.n_layers):
      vals, idx = sae_lib.topk_indices(pre[:, l], cfg.k, mesh)
      out.append(sae_lib._scatter_dense(jax.nn.relu(vals), idx, cfg.d_sae))
    return jnp.stack(out, 1)
  if a == "batchtopk":
    return pre * ((pre > aux["threshold"][None, :, None]) & (pre > 0)).astype(pre.dtype)
  if a == "jumprelu":
    return sae_lib.jumprelu(jax.nn.relu(pre), params["threshold"], cfg.jump_bandwidth)
  return jax.nn.relu(pre)


def decode(cfg: CLTConfig, params, aux, a_BLM, x_BLD=None, *, normalise: bool = True):
  """Codes -> every layer's reconstruction [B, L, D_out] in raw target units (the skip term
  needs the raw input x)."""
  if cfg.skip and x_BLD is None:
    raise ConfigError("decode: a skip CLT needs its inputs x_BLD")
  x = None
  if cfg.skip:
    x = x_BLD * aux["norm_scale"][None, :, None] if normalise else x_BLD
  ws = [params[f"W_dec_{l}"] for l in range(cfg.n_layers)]
  y = decode_dense(ws, a_BLM, _base(cfg, params, x) if cfg.skip else params["b_dec"])
  return y / aux["norm_scale_out"][None, :, None] if normalise else y


def jumprelu_thresholds(cfg: CLTConfig, params, aux, x_BLD) -> np.ndarray:
  """Per layer, the JumpReLU threshold (normalised units) at which a BatchTopK CLT keeps on
  average k features per token on the sample x_BLD (raw): the (k N)-th largest ReLU(h) of
  that layer.  The EMA thresholds of training estimate the same quantity batch by batch."""
  pre = np.asarray(pre_activations(params, x_BLD * aux["norm_scale"][None, :, None]))
  n = pre.shape[0] * int(cfg.k)
  out = []
  for l in range(cfg.n_layers):
    z = np.maximum(pre[:, l].reshape(-1), 0.0)
    out.append(float(np.partition(z, z.size - n)[z.size - n]) if n <= z.size else 0.0)
  return np.asarray(out, np.float32)
