"""Sparse autoencoders as pure functions on plain parameter pytrees.

Architectures (``SAEConfig.architecture``):

* ``relu``          Anthropic April 2024: f = ReLU(x W_enc + b_enc), x_hat = f W_dec + b_dec,
                    loss = ||x - x_hat||^2 + lam * sum_i f_i ||W_dec_i||; decoder unconstrained,
                    decoder rows initialised at norm ``dec_init_norm`` (0.1 in the recipe).
* ``relu_classic``  Towards Monosemanticity: f = ReLU((x - b_dec) W_enc + b_enc), L1 on f,
                    unit-norm decoder rows, the decoder gradient projected orthogonal to each row
                    (``_project_rows``) and rows renormalised after every update (``post_update``).
* ``topk``          OpenAI: top-k of (x - b_dec) W_enc + b_enc per token, ReLU on the kept values;
                    AuxK: the residual e = x - x_hat (no gradient) is reconstructed from the top
                    ``k_aux`` pre-activations among dead latents, decoded WITHOUT b_dec, loss
                    weight ``aux_alpha`` (1/32).  A latent is dead after ``dead_tokens`` tokens
                    without firing (counted in tokens, default 10M).
* ``batchtopk``     Bussmann et al.: keep the top k*B entries of ReLU(pre) over the whole batch;
                    an EMA of the smallest kept activation is the global inference threshold, so
                    the SAE is exported as a JumpReLU SAE.  AuxK as for topk.
* ``jumprelu``      Rajamanoharan et al.: f = pre * H(pre - theta), straight-through
                    ``jax.custom_vjp`` with a rectangle kernel of bandwidth ``jump_bandwidth``;
                    no gradient to pre through the jump; loss ||x - x_hat||^2 + lam sum_i
                    H(pre_i - theta_i); unit-norm decoder with projected gradients.
* ``jumprelu_tanh`` Anthropic January 2025: loss ||x - x_hat||^2 + lam sum_i tanh(c f_i ||W_dec_i||)
                    + lam_P sum_i ReLU(theta_i - pre_i) ||W_dec_i||; decoder unconstrained.
* ``matryoshka``    BatchTopK selection; the loss is the mean over nested prefixes of the
                    dictionary (``matryoshka_widths``, the last one d_sae) of the reconstruction
                    error of the prefix alone.  AuxK as for topk.

Several SAEs are trained at once by stacking every leaf on a leading SAE axis (size S, also 1
for a single SAE) and vmapping the single-SAE functions; the per-SAE hyperparameters k and the
sparsity coefficient live in ``aux`` so a sweep of either is one vmapped program.  k enters
``lax.top_k`` as the static maximum over the sweep and is masked per SAE.  On CPU, and for
sweeps of k on the sparse TopK path, the sweep is instead one program with a static loop over
the SAEs, each at its own k (``unrolled_sweep``; same results, tested).

TopK has two paths (``sparse_decode``): the dense one decodes with a [B, M] x [M, D] matmul;
the sparse one decodes as a gather-and-sum of the K active decoder rows and computes the
encoder and decoder gradients by scatter-adds over those rows only (custom VJPs), which the
benchmark measured 3.4x faster on CPU ("auto" picks per backend).

Inputs are multiplied by one normalisation scalar ``aux['norm_scale']`` estimated before
training (``estimate_norm_scale``); ``sae_io.export`` folds it into the weights.

Each architecture's training loss is one short function registered by name in ``LOSSES``;
``_loss_one`` computes the inputs they share and ``_metrics`` the metrics they all report.

Parameters of one SAE: W_enc_MD [M, D] (the encoder stored latent-major, i.e. the transpose of
SAELens' W_enc [d_in, d_sae], so the sparse TopK gradient is a row scatter with no transpose),
b_enc [M], W_dec [M, D], b_dec [D], and threshold [M] (float32) for JumpReLU.  On a mesh the
latent axis M of W_enc_MD, W_dec, b_enc and threshold is sharded over `model`.

Shapes: B batch, D d_in, M d_sae, K kept latents, S SAEs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxcode.errors import ConfigError, finite, increasing, positive_int
from jaxcode.parallel import DATA, MODEL

ARCHITECTURES = ("relu", "relu_classic", "topk", "batchtopk", "jumprelu", "jumprelu_tanh",
                 "matryoshka")
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
BATCH_TOPK_FAMILY = ("batchtopk", "matryoshka")
UNIT_NORM_DECODER = ("relu_classic", "topk", "batchtopk", "matryoshka", "jumprelu")
SUBTRACT_B_DEC = ("relu_classic", "topk", "batchtopk", "matryoshka")
NORMALISATIONS = ("none", "unit_mean_sq", "sqrt_d")
B_DEC_INITS = ("zeros", "mean", "geometric_median")
SPARSE_DECODE_CHOICES = ("auto", "sparse", "dense")
SWEEP_MODES = ("auto", "vmap", "unroll")
# Which TopK path sparse_decode="auto" takes on each backend: the faster one in
# configs/bench/sae.py (topk_faster_path).  CPU, 2 cores, d_in 768, d_sae 16384, k 32, batch
# 2048: sparse 0.35 of the dense ReLU step, dense TopK 1.2.  GPU and TPU have not been
# measured by this project yet, so they keep the dense matmul path.
SPARSE_TOPK_FASTER = {"cpu": True}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEConfig:
  """Static description of one SAE or of a sweep of SAEs sharing architecture and width.

  ``k`` and ``sparsity_coef`` may each be a number or a tuple (one value per SAE of a sweep);
  a number is broadcast to the sweep.  Fields are keyword-only and have no defaults: they are
  declared once, with their defaults, in configs/sae.py's `sae` block, from which
  jaxcode.pipeline.sae.sae_config builds this.
  """
  architecture: str
  d_in: int
  d_sae: int
  k: int | tuple[int, ...]  # topk-family kept latents (mean L0 for batch)
  sparsity_coef: float | tuple[float, ...]  # L1 / L0 / tanh coefficient (lambda)
  sparsity_warmup_steps: int  # linear warm-up of lambda from 0
  k_aux: int | None  # AuxK latents; None: d_in // 2
  aux_alpha: float  # AuxK loss weight
  dead_tokens: int  # tokens without firing -> dead
  jump_bandwidth: float  # epsilon of the rectangle kernel
  jump_threshold_init: float  # theta_0
  tanh_c: float  # c of the tanh sparsity loss
  pre_act_coef: float  # lambda_P of the pre-activation loss
  threshold_ema: float  # BatchTopK inference threshold EMA decay
  threshold_ema_start: int  # step from which the EMA is updated
  matryoshka_widths: tuple[int, ...]  # nested prefix widths; d_sae appended
  dec_init_norm: float  # decoder row norm at init
  b_dec_init: str  # zeros | mean | geometric_median
  normalisation: str  # none | unit_mean_sq | sqrt_d
  sparse_decode: bool | str  # topk: sparse decode and encoder gradients; "auto": measured faster
  sweep_mode: str  # auto | vmap | unroll (see unrolled_sweep)
  # Transcoders (the defaults make an SAE).  A transcoder reads x and predicts another
  # activation y of width d_out (an MLP's output from its input); a skip transcoder adds the
  # linear term x W_skip^T.  `sources`, when set, gives for each dictionary of the stack the
  # index of its layer in a batch of layers [B, L, D] (a per-layer set trained at once).
  transcoder: bool = False
  skip: bool = False
  d_out: int = 0  # transcoders: output width (0: d_in)
  sources: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "sparse_decode", resolve_sparse_decode(self.sparse_decode))
    if self.sweep_mode not in SWEEP_MODES:
      raise ConfigError(f"sae.sweep_mode={self.sweep_mode!r}: expected one of {SWEEP_MODES}")

  @property
  def ks(self) -> tuple[int, ...]:
    return _as_tuple(self.k, self.n_saes)

  @property
  def coefs(self) -> tuple[float, ...]:
    return _as_tuple(self.sparsity_coef, self.n_saes)

  @property
  def n_saes(self) -> int:
    lens = [len(v) for v in (self.k, self.sparsity_coef, self.sources or None)
            if isinstance(v, (tuple, list))]
    return max(lens) if lens else 1

  @property
  def d_target(self) -> int:
    """The width of what the dictionary reconstructs: d_in for an SAE, d_out for a
    transcoder."""
    return int(self.d_out) if (self.transcoder and self.d_out) else self.d_in

  @property
  def subtract_b_dec(self) -> bool:
    """Whether the input is centred by b_dec before encoding (SAE architectures that do so;
    never a transcoder, whose b_dec lives in the output space)."""
    return self.architecture in SUBTRACT_B_DEC and not self.transcoder

  @property
  def k_max(self) -> int:
    return max(self.ks)

  @property
  def k_aux_eff(self) -> int:
    return min(self.k_aux if self.k_aux is not None else self.d_in // 2, self.d_sae)

  @property
  def widths(self) -> tuple[int, ...]:
    w = tuple(int(v) for v in self.matryoshka_widths)
    return w if (w and w[-1] == self.d_sae) else w + (self.d_sae,)


def resolve_sparse_decode(v) -> bool:
  """sae.sparse_decode as a bool: 'sparse' / 'dense', or 'auto' = the path measured faster on
  this backend (SPARSE_TOPK_FASTER)."""
  if isinstance(v, str):
    if v not in SPARSE_DECODE_CHOICES:
      raise ConfigError(f"sae.sparse_decode={v!r}: expected one of {SPARSE_DECODE_CHOICES} "
                        "or a bool")
    return SPARSE_TOPK_FASTER.get(jax.default_backend(), False) if v == "auto" else v == "sparse"
  return bool(v)


def _as_tuple(v, n):
  if isinstance(v, (tuple, list)):
    return tuple(v)
  return (v,) * n


def validate(cfg: SAEConfig, mesh: Mesh | None = None, data_d_in: int | None = None) -> None:
  """Raises ConfigError (one line) for a bad config, before any compute."""
  for name, value, choices in (("architecture", cfg.architecture, ARCHITECTURES),
                               ("normalisation", cfg.normalisation, NORMALISATIONS),
                               ("b_dec_init", cfg.b_dec_init, B_DEC_INITS)):
    if value not in choices:
      raise ConfigError(f"sae.{name}={value!r}: expected one of {choices}")
  positive_int("sae.d_in", cfg.d_in)
  positive_int("sae.d_sae", cfg.d_sae)
  if data_d_in is not None and int(data_d_in) != int(cfg.d_in):
    raise ConfigError(f"sae.d_in={cfg.d_in} does not match the data's d_in={data_d_in}")
  _validate_sparsity(cfg)
  positive_int("sae.dead_tokens", cfg.dead_tokens)
  if not 0.0 <= finite("sae.threshold_ema", cfg.threshold_ema) < 1.0:
    raise ConfigError(f"sae.threshold_ema={cfg.threshold_ema}: expected 0 <= decay < 1")
  if cfg.architecture == "matryoshka":
    w = cfg.widths
    positive_int("sae.matryoshka_widths[0]", w[0])
    increasing(f"sae.matryoshka_widths (d_sae={cfg.d_sae} appended)", w)
  if mesh is not None and cfg.d_sae % mesh.shape[MODEL]:
    raise ConfigError(f"mesh model axis {mesh.shape[MODEL]} does not divide "
                      f"d_sae={cfg.d_sae}")


def _validate_sparsity(cfg: SAEConfig) -> None:
  """The sweep lengths, k and k_aux (topk family), and the loss coefficients."""
  lens = {len(v) for v in (cfg.k, cfg.sparsity_coef, cfg.sources or None)
          if isinstance(v, (tuple, list))}
  if len(lens) > 1:
    raise ConfigError(f"sae.k={cfg.k}, sae.sparsity_coef={cfg.sparsity_coef} and the "
                      f"layers {cfg.sources or ()}: stacks of different lengths")
  if cfg.skip and not cfg.transcoder:
    raise ConfigError("skip=True: a skip term needs a transcoder (transcoder=True)")
  if cfg.architecture in TOPK_FAMILY:
    for k in cfg.ks:
      if positive_int("sae.k", k) > cfg.d_sae:
        raise ConfigError(f"sae.k={k}: expected 0 < k <= d_sae={cfg.d_sae}")
    if cfg.k_aux is not None:
      positive_int("sae.k_aux", cfg.k_aux)
  for c in cfg.coefs:
    finite("sae.sparsity_coef", c, low=0.0)
  finite("sae.pre_act_coef", cfg.pre_act_coef, low=0.0)
  finite("sae.aux_alpha", cfg.aux_alpha, low=0.0)
  if cfg.architecture.startswith("jumprelu"):
    finite("sae.jump_bandwidth", cfg.jump_bandwidth, low=0.0, low_open=True)


# ------------------------------------------------------------------ normalisation and init

def estimate_norm_scale(x_ND: np.ndarray | jax.Array, mode: str) -> float:
  """The scalar s such that s*x has E||s x||^2 = 1 (unit_mean_sq) or E||s x|| = sqrt(d)."""
  x = np.asarray(x_ND, np.float64)
  if mode == "none":
    return 1.0
  if mode == "unit_mean_sq":
    return float(1.0 / np.sqrt(np.mean(np.sum(x * x, axis=-1))))
  if mode == "sqrt_d":
    return float(np.sqrt(x.shape[-1]) / np.mean(np.linalg.norm(x, axis=-1)))
  raise ConfigError(f"normalisation={mode!r}: expected one of {NORMALISATIONS}")


def geometric_median(x_ND: jax.Array, iters: int = 100, eps: float = 1e-8) -> jax.Array:
  """Weiszfeld iterations for argmin_m sum_n ||x_n - m||, started at the mean."""
  x = jnp.asarray(x_ND, jnp.float32)

  def body(_, m):
    w = 1.0 / jnp.maximum(jnp.linalg.norm(x - m, axis=-1), eps)
    return (w[:, None] * x).sum(0) / w.sum()

  return lax.fori_loop(0, iters, body, x.mean(0))


def _unit_rows(key, shape, norm):
  w = jax.random.normal(key, shape, jnp.float32)
  return norm * w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def _init_one(cfg: SAEConfig, key, b_dec_D, k, coef, norm_scale, norm_scale_out):
  D, M = cfg.d_in, cfg.d_sae
  w_dec_MD = _unit_rows(key, (M, cfg.d_target), cfg.dec_init_norm)
  # An SAE starts with W_enc = W_dec^T; a transcoder's encoder lives in another space, so it
  # gets its own random rows of the same norm (and W_skip starts at zero, never penalised).
  w_enc_MD = (_unit_rows(jax.random.fold_in(key, 1), (M, D), cfg.dec_init_norm)
              if cfg.transcoder else jnp.array(w_dec_MD, copy=True))
  params = {"W_enc_MD": w_enc_MD, "b_enc": jnp.zeros((M,), jnp.float32), "W_dec": w_dec_MD,
            "b_dec": b_dec_D.astype(jnp.float32)}
  if cfg.skip:
    params["W_skip"] = jnp.zeros((cfg.d_target, D), jnp.float32)
  if cfg.architecture.startswith("jumprelu"):
    params["threshold"] = jnp.full((M,), cfg.jump_threshold_init, jnp.float32)
  aux = {"k": jnp.asarray(k, jnp.int32), "coef": jnp.asarray(coef, jnp.float32),
         "norm_scale": jnp.asarray(norm_scale, jnp.float32),
         "tokens_since_fired": jnp.zeros((M,), jnp.int32),
         "threshold": jnp.asarray(-1.0, jnp.float32)}
  if cfg.transcoder:
    aux["norm_scale_out"] = jnp.asarray(norm_scale_out, jnp.float32)
  return params, aux


def split_pair(cfg: SAEConfig, batch):
  """(x, y) of a batch: an SAE's array (y = x) or a transcoder's {'x': ..., 'y': ...}."""
  if cfg.transcoder:
    if not isinstance(batch, dict) or set(batch) != {"x", "y"}:
      raise ConfigError("a transcoder's batch must be a dict with keys 'x' (input) and 'y' "
                        "(target)")
    return batch["x"], batch["y"]
  x = batch["x"] if isinstance(batch, dict) else batch
  return x, x


def _per_dictionary(cfg: SAEConfig, a):
  """The host sample of each dictionary of the stack: a[:, sources[i]] when a batch holds
  layers [N, L, D], else a itself."""
  a = np.asarray(a, np.float32)
  if not cfg.sources:
    return [a] * cfg.n_saes
  return [a[:, j] for j in cfg.sources]


def _b_dec_init(cfg: SAEConfig, ys) -> np.ndarray:
  if cfg.b_dec_init == "zeros":
    return np.zeros((cfg.d_target,), np.float32)
  if cfg.b_dec_init == "mean":
    return np.asarray(jnp.asarray(ys).mean(0))
  return np.asarray(geometric_median(ys))


def make_init(cfg: SAEConfig, x_sample_ND) -> Callable[[jax.Array], tuple[Any, Any]]:
  """init(key) -> (params, aux), every leaf stacked on a leading SAE axis of size n_saes.

  The normalisation scalars (input, and target for a transcoder) and b_dec (mean or geometric
  median of the normalised target) come from `x_sample_ND`, a host sample drawn before
  training (an SAE's [N, D]; a transcoder's {'x', 'y'}, [N, L, D] each with `sources`); they
  are constants of the returned function.
  """
  xs_all, ys_all = split_pair(cfg, x_sample_ND)
  xs_l, ys_l = _per_dictionary(cfg, xs_all), _per_dictionary(cfg, ys_all)
  validate(cfg, data_d_in=xs_l[0].shape[-1])
  if cfg.transcoder and ys_l[0].shape[-1] != cfg.d_target:
    raise ConfigError(f"sae.d_out={cfg.d_target} does not match the target's width "
                      f"{ys_l[0].shape[-1]}")
  scales = np.asarray([estimate_norm_scale(x, cfg.normalisation) for x in xs_l], np.float32)
  scales_out = (np.asarray([estimate_norm_scale(y, cfg.normalisation) for y in ys_l],
                           np.float32) if cfg.transcoder else scales)
  b_dec = np.stack([_b_dec_init(cfg, jnp.asarray(y) * so) for y, so in zip(ys_l, scales_out)])
  ks = jnp.asarray(cfg.ks, jnp.int32)
  coefs = jnp.asarray(cfg.coefs, jnp.float32)

  def init(key):
    keys = jax.random.split(key, cfg.n_saes)
    return jax.vmap(lambda kk, k, c, b, s, so: _init_one(cfg, kk, b, k, c, s, so))(
        keys, ks, coefs, jnp.asarray(b_dec), jnp.asarray(scales), jnp.asarray(scales_out))

  return init


# ------------------------------------------------------------------ custom gradients

def _row_sums(a_MD):
  """sum_d a[m, d] as [M, 1], by a matrix-vector product with ones.  On XLA:CPU the plain
  row reduction, fused with the optimizer update before it, ran as a YNNPACK fusion that
  materialised scalar broadcasts at full size: Adam + row renormalisation of two
  [16384, 768] matrices took 128 ms with jnp.linalg.norm and 45 ms with this."""
  return jnp.matmul(a_MD, jnp.ones((a_MD.shape[-1], 1), a_MD.dtype),
                    precision=lax.Precision.HIGHEST)


@jax.custom_vjp
def _project_rows(w_MD):
  """Identity whose gradient has each row's component along that row removed."""
  return w_MD


def _project_rows_fwd(w):
  return w, w


def _project_rows_bwd(w, g):
  along = _row_sums(g * w) / jnp.maximum(_row_sums(w * w), 1e-12)
  return (g - along * w,)


_project_rows.defvjp(_project_rows_fwd, _project_rows_bwd)


def _rect(u):
  return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z_BM, theta_M, eps):
  """z * H(z - theta). Gradients: dz = H(z - theta) g; dtheta = -(theta/eps) K((z-theta)/eps) g."""
  return z_BM * (z_BM > theta_M).astype(z_BM.dtype)


def _jumprelu_fwd(z, theta, eps):
  return jumprelu(z, theta, eps), (z, theta)


def _jumprelu_bwd(eps, res, g):
  z, theta = res
  dz = g * (z > theta).astype(z.dtype)
  dtheta = -(theta / eps) * _rect((z - theta) / eps) * g
  return dz, _sum_to(dtheta, theta.shape)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside_step(z_BM, theta_M, eps):
  """H(z - theta). Gradients: dz = 0; dtheta = -(1/eps) K((z - theta)/eps) g."""
  return (z_BM > theta_M).astype(z_BM.dtype)


def _step_fwd(z, theta, eps):
  return heaviside_step(z, theta, eps), (z, theta)


def _step_bwd(eps, res, g):
  z, theta = res
  dtheta = -(1.0 / eps) * _rect((z - theta) / eps) * g
  return jnp.zeros_like(z), _sum_to(dtheta, theta.shape)


heaviside_step.defvjp(_step_fwd, _step_bwd)


def _sum_to(x, shape):
  return x.reshape((-1,) + tuple(shape)).sum(0) if x.shape != tuple(shape) else x


# ------------------------------------------------------------------ top-k, sharded top-k

def _model_size(mesh):
  return 1 if mesh is None else int(mesh.shape[MODEL])


def topk_indices(pre_BM: jax.Array, k: int, mesh: Mesh | None = None):
  """(values, indices) of the k largest entries of each row; no gradient.

  On a mesh whose `model` axis shards M, each device takes its local top-k, the candidates
  are all-gathered over `model` and a global top-k picks the winners (jax.shard_map).
  """
  pre_BM = lax.stop_gradient(pre_BM)
  n = _model_size(mesh)
  if n == 1:
    return lax.top_k(pre_BM, k)
  m_loc = pre_BM.shape[-1] // n
  kl = min(k, m_loc)

  def local(p):
    v, i = lax.top_k(p, kl)
    i = i + lax.axis_index(MODEL) * m_loc
    v = lax.all_gather(v, MODEL, axis=1, tiled=True)
    i = lax.all_gather(i, MODEL, axis=1, tiled=True)
    v2, j = lax.top_k(v, k)
    return v2, jnp.take_along_axis(i, j, axis=1)

  return jax.shard_map(local, mesh=mesh, in_specs=P(DATA, MODEL),
                       out_specs=(P(DATA, None), P(DATA, None)), check_vma=False)(pre_BM)


def batch_kth_largest(v_BM: jax.Array, kb_max: int, kb: jax.Array, mesh: Mesh | None = None):
  """The kb-th largest entry of the whole array (kb <= kb_max traced); no gradient.

  Sharded: local top-kb_max on every device, all-gathered over both mesh axes, then a global
  top-kb_max.
  """
  v_BM = lax.stop_gradient(v_BM)
  if mesh is None or mesh.size == 1:
    vals = lax.top_k(v_BM.reshape(-1), kb_max)[0]
  else:
    n_loc = (v_BM.shape[0] // mesh.shape[DATA]) * (v_BM.shape[1] // mesh.shape[MODEL])
    kl = min(kb_max, n_loc)

    def local(p):
      v = lax.top_k(p.reshape(-1), kl)[0]
      v = lax.all_gather(v, (DATA, MODEL), axis=0, tiled=True)
      return lax.top_k(v, kb_max)[0]

    vals = jax.shard_map(local, mesh=mesh, in_specs=P(DATA, MODEL), out_specs=P(),
                         check_vma=False)(v_BM)
  return vals[kb - 1]


# ------------------------------------------------------------------ encode / decode pieces

def _w_dec(cfg, params):
  w = params["W_dec"]
  return _project_rows(w) if cfg.architecture in UNIT_NORM_DECODER else w


def pre_activation(cfg: SAEConfig, params, x_BD):
  """x (already normalised) -> pre-activations [B, M]."""
  xin = x_BD - params["b_dec"] if cfg.subtract_b_dec else x_BD
  return jnp.einsum("bd,md->bm", xin, params["W_enc_MD"]) + params["b_enc"]


# The sparse TopK path.  Rows of a [M, D] matrix are gathered, combined and scatter-added one
# rank at a time (a loop over the first n of K ranks, each a [B, D] slab), so no [B, K, D]
# temporary is ever formed: a step costs B*n*D against the 2*B*M*D of a dense matmul.  n is a
# traced count: K for the main codes, k_aux or 0 for AuxK (0 while no latent is dead).

def _split_g(g_BD, g2_BD, k, split):
  """The cotangent of rank k: g for ranks below `split`, g2 from there on."""
  if g2_BD is None:
    return g_BD
  return jnp.where(k < split, g_BD, g2_BD)


def _rows_dot(w_MD, x_BD, idx_BK, n, x2_BD=None, split=0):
  """out[b, k] = x[b] . w[idx[b, k]] for ranks k < n (x2 instead of x from rank `split`),
  0 beyond n."""
  def body(k, out):
    xk = _split_g(x_BD, x2_BD, k, split)
    col = jnp.sum(xk * jnp.take(w_MD, idx_BK[:, k], axis=0), -1)
    return lax.dynamic_update_slice_in_dim(out, col[:, None].astype(out.dtype), k, axis=1)
  return lax.fori_loop(0, n, body, jnp.zeros(idx_BK.shape, x_BD.dtype))


def _rows_combine(w_MD, v_BK, idx_BK, lo, hi):
  """out[b] = sum_{lo <= k < hi} v[b, k] w[idx[b, k]]."""
  def body(k, acc):
    return acc + v_BK[:, k, None] * jnp.take(w_MD, idx_BK[:, k], axis=0)
  return lax.fori_loop(lo, hi, body, jnp.zeros((idx_BK.shape[0], w_MD.shape[1]), w_MD.dtype))


def _rows_scatter(v_BK, x_BD, idx_BK, n, m: int, x2_BD=None, split=0):
  """out[M, D] with out[idx[b, k]] += v[b, k] x[b] for k < n (x2 instead of x from rank
  `split`; repeated indices add up)."""
  def body(k, acc):
    return acc.at[idx_BK[:, k]].add(v_BK[:, k, None] * _split_g(x_BD, x2_BD, k, split))
  return lax.fori_loop(0, n, body, jnp.zeros((m, x_BD.shape[1]), x_BD.dtype))


@jax.custom_vjp
def _sparse_selected(w_enc_MD, b_enc_M, xin_BD, vals_BK, idx_BK, n):
  """Identity on vals = (xin W_enc^T + b_enc)[b, idx[b, k]] (taken from a stop-gradient dense
  pre-activation); the backward pass routes the gradient of the first n ranks to W_enc, b_enc
  and xin sparsely, at B*n*D cost instead of the dense path's 4*B*M*D (equal gradients:
  tested)."""
  del w_enc_MD, b_enc_M, xin_BD, idx_BK, n
  return vals_BK


def _sparse_selected_fwd(w_enc_MD, b_enc_M, xin_BD, vals_BK, idx_BK, n):
  return vals_BK, (w_enc_MD, b_enc_M, xin_BD, vals_BK, idx_BK, n)


def _sparse_selected_bwd(res, g_BK):
  w, b, xin, vals, idx, n = res
  g_BK = jnp.where(jnp.arange(idx.shape[1]) < n, g_BK, 0)
  dw = _rows_scatter(g_BK, xin, idx, n, w.shape[0]).astype(w.dtype)
  db = jnp.zeros_like(b).at[idx.reshape(-1)].add(g_BK.reshape(-1).astype(b.dtype))
  dxin = _rows_combine(w, g_BK.astype(w.dtype), idx, 0, n).astype(xin.dtype)
  return dw, db, dxin, jnp.zeros_like(vals), None, None


_sparse_selected.defvjp(_sparse_selected_fwd, _sparse_selected_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _decode_sparse(w_dec_MD, vals_BK, idx_BK, n, split):
  """The decoder as a gather-and-sum of the active rows, in two parts: (sum over ranks
  k < split, sum over split <= k < n) of vals[b, k] W_dec[idx[b, k]] (the TopK codes and the
  AuxK codes of one step, so one backward loop serves both).  Gradients: dvals = g . W_dec[idx]
  and dW_dec = scatter-add of vals g (no dense [B, M])."""
  return (_rows_combine(w_dec_MD, vals_BK, idx_BK, 0, jnp.minimum(n, split)),
          _rows_combine(w_dec_MD, vals_BK, idx_BK, split, jnp.maximum(n, split)))


def _decode_sparse_fwd(w_dec_MD, vals_BK, idx_BK, n, split):
  return _decode_sparse(w_dec_MD, vals_BK, idx_BK, n, split), (w_dec_MD, vals_BK, idx_BK, n)


def _decode_sparse_bwd(split, res, gs):
  w, v, idx, n = res
  g, g2 = gs
  dw = _rows_scatter(v.astype(g.dtype), g, idx, n, w.shape[0], g2, split).astype(w.dtype)
  dv = _rows_dot(w, g.astype(w.dtype), idx, n, g2.astype(w.dtype), split).astype(v.dtype)
  return dw, dv, None, None


_decode_sparse.defvjp(_decode_sparse_fwd, _decode_sparse_bwd)


def _selected_pre(cfg, params, x_BD, pre_BM, idx_BK, n=None):
  """Pre-activations at the chosen latents.  Dense path: a gather from pre (gradient through
  the dense matmul).  Sparse path: the same values, gradients routed by _sparse_selected."""
  if not cfg.sparse_decode:
    return jnp.take_along_axis(pre_BM, idx_BK, axis=1)
  vals = jnp.take_along_axis(lax.stop_gradient(pre_BM), idx_BK, axis=1)
  xin = x_BD - params["b_dec"] if cfg.subtract_b_dec else x_BD
  n = jnp.int32(idx_BK.shape[1]) if n is None else n
  return _sparse_selected(params["W_enc_MD"], params["b_enc"], xin, vals, idx_BK, n)


def _scatter_dense(vals_BK, idx_BK, m):
  rows = jnp.arange(vals_BK.shape[0])[:, None]
  return jnp.zeros((vals_BK.shape[0], m), vals_BK.dtype).at[rows, idx_BK].add(vals_BK)


def _topk_codes(cfg, params, x_BD, pre_BM, k, mesh):
  """Per-token top-k: (vals_BK masked to rank < k, idx_BK), values carry gradients."""
  _, idx = topk_indices(pre_BM, cfg.k_max, mesh)
  vals = _selected_pre(cfg, params, x_BD, pre_BM, idx)
  keep = (jnp.arange(cfg.k_max) < k)[None, :]
  return jax.nn.relu(vals) * keep, idx


def encode(cfg: SAEConfig, params, aux, x_BD, *, mesh: Mesh | None = None, normalise=True):
  """Inference codes f [B, M] of one SAE for raw inputs (normalised here unless told not to).

  topk keeps the top k per token; batchtopk and matryoshka use the EMA global threshold
  (JumpReLU form, as exported); jumprelu uses its thresholds; relu variants use ReLU.
  """
  x = x_BD * aux["norm_scale"] if normalise else x_BD
  pre = pre_activation(cfg, params, x)
  a = cfg.architecture
  if a == "topk":
    vals, idx = _topk_codes(dataclasses.replace(cfg, sparse_decode=False), params, x, pre,
                            aux["k"], mesh)
    return _scatter_dense(vals, idx, cfg.d_sae)
  if a in BATCH_TOPK_FAMILY:
    return pre * (pre > aux["threshold"]).astype(pre.dtype) * (pre > 0)
  if a.startswith("jumprelu"):
    return jumprelu(jax.nn.relu(pre), params["threshold"], cfg.jump_bandwidth)
  return jax.nn.relu(pre)


def decode(cfg: SAEConfig, params, aux, f_BM, *, normalise=True, x_BD=None):
  """Codes -> reconstruction in raw units (divided by the normalisation scalar; for a
  transcoder the target's).  A skip transcoder also needs its input x_BD (raw units if
  normalise, else normalised)."""
  if cfg.skip and x_BD is None:
    raise ConfigError("decode: a skip transcoder needs its input x_BD")
  if cfg.skip:
    x_n = x_BD * aux["norm_scale"] if normalise else x_BD
    x_hat = f_BM @ params["W_dec"] + _base(cfg, params, x_n)
  else:
    x_hat = f_BM @ params["W_dec"] + params["b_dec"]
  if not normalise:
    return x_hat
  return x_hat / (aux["norm_scale_out"] if cfg.transcoder else aux["norm_scale"])


# ------------------------------------------------------------------ the training loss

def _sq(x_BD):
  return jnp.sum(x_BD * x_BD, axis=-1)


def _dead_topk(pre_BM, dead_M, ka: int, mesh):
  """Indices [B, ka] of the largest pre-activations among dead latents (no gradient)."""
  return topk_indices(jnp.where(dead_M[None, :], pre_BM, -jnp.inf), ka, mesh)[1]


def _aux_ranks(pre_BM, dead_M, ka: int, mesh, run):
  """AuxK latents for the sparse path: (indices [B, ka], active rank count) = the dead top-k
  and ka when `run`, else zeros and 0; the choice sits in a lax.cond with no gradient."""
  idx = lax.cond(run, lambda p: _dead_topk(p, dead_M, ka, mesh),
                 lambda p: jnp.zeros((p.shape[0], ka), jnp.int32), pre_BM)
  return idx, jnp.where(run, ka, 0).astype(jnp.int32)


def _auxk(cfg, params, pre_BM, x_BD, resid_BD, dead_M, mesh, run):
  """AuxK: reconstruct the (stop-gradient) residual from the top k_aux dead latents.

  The auxiliary reconstruction is sum_j a_j W_dec[j] with NO b_dec.  Returns
  (alpha-free aux mse, e_hat).  Zero when no latent is dead.
  """
  if cfg.sparse_decode:
    return _auxk_sparse(cfg, params, pre_BM, x_BD, resid_BD, dead_M, mesh, run)
  ka = cfg.k_aux_eff
  e = lax.stop_gradient(resid_BD)

  def compute(params, pre_BM, x_BD):
    idx = _dead_topk(pre_BM, dead_M, ka, mesh)
    vals = jnp.take_along_axis(pre_BM, idx, axis=1)
    vals = jax.nn.relu(vals) * jnp.take(dead_M, idx).astype(vals.dtype)
    e_hat = auxk_decode(cfg, params, vals, idx)
    return jnp.mean(_sq(e - e_hat)), e_hat

  def skip(params, pre_BM, x_BD):
    return jnp.float32(0.0), jnp.zeros_like(e)

  # Skipped entirely while no latent is dead (a select, not a skip, under the sweep's vmap).
  # jax.checkpoint: the branch saves no residuals of its own (a [B, k_aux, D] gather would
  # otherwise be materialised, as zeros, even on steps where the branch is skipped).
  l, e_hat = lax.cond(run, jax.checkpoint(compute), skip, params, pre_BM, x_BD)
  return jnp.where(jnp.any(dead_M), l, 0.0), e_hat


def _topk_sparse(cfg, params, x_BD, y_BD, base_BD, pre_BM, k, dead_M, mesh, run):
  """TopK codes, reconstruction and AuxK loss on the sparse path, in one pass.

  The K = k_max TopK ranks and the k_aux AuxK ranks (dead latents, chosen in a lax.cond with
  no gradient) are laid side by side, [B, K + k_aux], so one sparse backward loop (over
  K + k_aux ranks when a latent is dead, over K otherwise) gives W_enc, b_enc, W_dec and b_dec
  their whole gradient: no dense zero gradients for a skipped AuxK.
  Returns (vals [B, K] masked to rank < k, idx [B, K], x_hat [B, D], aux mse).
  """
  K, ka = cfg.k_max, cfg.k_aux_eff
  pre = lax.stop_gradient(pre_BM)
  _, idx = topk_indices(pre, K, mesh)
  any_dead = jnp.any(dead_M)
  idx_aux, n_aux = _aux_ranks(pre, dead_M, ka, mesh, run)
  n = K + n_aux
  idx_all = jnp.concatenate([idx, idx_aux], axis=1)
  sel = jax.nn.relu(_selected_pre(cfg, params, x_BD, pre, idx_all, n))
  vals = sel[:, :K] * (jnp.arange(K) < k)[None, :].astype(sel.dtype)
  vals_aux = sel[:, K:] * jnp.take(dead_M, idx_aux).astype(sel.dtype)
  x_main, e_hat = _decode_sparse(_w_dec(cfg, params), jnp.concatenate([vals, vals_aux], 1),
                                 idx_all, n, K)
  x_hat = x_main + base_BD
  e = lax.stop_gradient(y_BD - x_hat)
  aux_loss = jnp.where(any_dead, jnp.mean(_sq(e - e_hat)), 0.0)
  return vals, idx, x_hat, aux_loss


def _auxk_sparse(cfg, params, pre_BM, x_BD, resid_BD, dead_M, mesh, run):
  """AuxK on the sparse path.  Only the choice of latents sits in a lax.cond (no gradient, so
  a skipped step costs no dense zero cotangents); the values and the decode run over
  n = k_aux ranks when a latent is dead and n = 0 otherwise."""
  ka = cfg.k_aux_eff
  e = lax.stop_gradient(resid_BD)
  pre = lax.stop_gradient(pre_BM)
  any_dead = jnp.any(dead_M)
  idx, n = _aux_ranks(pre, dead_M, ka, mesh, run)
  vals = _selected_pre(cfg, params, x_BD, pre, idx, n)
  vals = jax.nn.relu(vals) * jnp.take(dead_M, idx).astype(vals.dtype)
  e_hat = _decode_sparse(_w_dec(cfg, params), vals, idx, n, 0)[1]
  return jnp.where(any_dead, jnp.mean(_sq(e - e_hat)), 0.0), e_hat


def auxk_decode(cfg, params, vals_BK, idx_BK):
  """The AuxK reconstruction sum_k vals W_dec[idx] (deliberately without b_dec), dense path;
  the sparse path decodes AuxK ranks in _decode_sparse's second output."""
  return _scatter_dense(vals_BK, idx_BK, cfg.d_sae) @ _w_dec(cfg, params)


def _fired_and_update(cfg, aux, fired_M, batch_tokens):
  t = aux["tokens_since_fired"]
  t = jnp.where(fired_M, 0, jnp.minimum(t + batch_tokens, cfg.dead_tokens)).astype(jnp.int32)
  return t


class _Batch(NamedTuple):
  """What every architecture's loss sees of one step, computed once in _loss_one."""
  x_BD: jax.Array          # inputs, normalised
  y_BD: jax.Array          # targets, normalised (x itself for an SAE)
  base_BD: jax.Array       # what the reconstruction adds to the decoded codes: b_dec, plus
                           # x W_skip^T for a skip transcoder
  pre_BM: jax.Array        # encoder pre-activations
  w_dec_MD: jax.Array      # the decoder as the loss uses it (_w_dec: row-projected gradients)
  dec_norm_M: jax.Array    # decoder row norms (relu, jumprelu_tanh)
  dead_M: jax.Array        # latents dead before this step
  lam: jax.Array           # sparsity coefficient after warm-up
  step: jax.Array
  mesh: Mesh | None
  run_auxk: jax.Array      # whether any SAE of the sweep has a dead latent


class _Terms(NamedTuple):
  """One architecture's loss and what the shared metrics need of it."""
  loss: jax.Array
  mse: jax.Array
  x_hat_BD: jax.Array
  fired_M: jax.Array
  l0: jax.Array
  sparsity: jax.Array | None = None     # None: 0
  aux_loss: jax.Array | None = None     # None: 0
  extra: dict | None = None             # architecture-specific metrics
  threshold: jax.Array | None = None    # the new BatchTopK inference threshold


# ---- relu, relu_classic, jumprelu, jumprelu_tanh: dense codes f, loss = mse + sparsity

def _codes_terms(params, b: _Batch, f_BM, sparsity, extra=None) -> _Terms:
  x_hat_BD = f_BM @ b.w_dec_MD + b.base_BD
  mse = jnp.mean(_sq(b.y_BD - x_hat_BD))
  return _Terms(mse + sparsity, mse, x_hat_BD, jnp.any(f_BM > 0, axis=0),
                jnp.mean(jnp.sum(f_BM > 0, -1)), sparsity=sparsity, extra=extra)


def _loss_relu(cfg, params, aux, b: _Batch) -> _Terms:
  """L1 on the codes weighted by the decoder row norms."""
  f_BM = jax.nn.relu(b.pre_BM)
  return _codes_terms(params, b, f_BM, b.lam * jnp.mean(jnp.sum(f_BM * b.dec_norm_M, -1)))


def _loss_relu_classic(cfg, params, aux, b: _Batch) -> _Terms:
  """L1 on the codes (unit-norm decoder)."""
  f_BM = jax.nn.relu(b.pre_BM)
  return _codes_terms(params, b, f_BM, b.lam * jnp.mean(jnp.sum(jnp.abs(f_BM), -1)))


def _loss_jumprelu(cfg, params, aux, b: _Batch) -> _Terms:
  """L0 through the straight-through Heaviside step."""
  z_BM = jax.nn.relu(b.pre_BM)
  f_BM = jumprelu(z_BM, params["threshold"], cfg.jump_bandwidth)
  on_BM = heaviside_step(z_BM, params["threshold"], cfg.jump_bandwidth)
  return _codes_terms(params, b, f_BM, b.lam * jnp.mean(jnp.sum(on_BM, -1)))


def _loss_jumprelu_tanh(cfg, params, aux, b: _Batch) -> _Terms:
  """tanh(c f ||W_dec||) sparsity plus the pre-activation loss ReLU(theta - pre) ||W_dec||."""
  theta_M = params["threshold"]
  f_BM = jumprelu(jax.nn.relu(b.pre_BM), theta_M, cfg.jump_bandwidth)
  tanh = b.lam * jnp.mean(jnp.sum(jnp.tanh(cfg.tanh_c * f_BM * b.dec_norm_M), -1))
  pre_act = cfg.pre_act_coef * jnp.mean(
      jnp.sum(jax.nn.relu(theta_M - b.pre_BM) * b.dec_norm_M, -1))
  return _codes_terms(params, b, f_BM, tanh + pre_act, extra={"pre_act_loss": pre_act})


# ---- topk: k per token, AuxK

def _loss_topk(cfg, params, aux, b: _Batch) -> _Terms:
  if cfg.sparse_decode:
    vals_BK, idx_BK, x_hat_BD, aux_loss = _topk_sparse(
        cfg, params, b.x_BD, b.y_BD, b.base_BD, b.pre_BM, aux["k"], b.dead_M, b.mesh, b.run_auxk)
  else:
    vals_BK, idx_BK = _topk_codes(cfg, params, b.x_BD, b.pre_BM, aux["k"], b.mesh)
    x_hat_BD = _scatter_dense(vals_BK, idx_BK, cfg.d_sae) @ b.w_dec_MD + b.base_BD
    aux_loss, _ = _auxk(cfg, params, b.pre_BM, b.x_BD, b.y_BD - x_hat_BD, b.dead_M, b.mesh,
                        b.run_auxk)
  mse = jnp.mean(_sq(b.y_BD - x_hat_BD))
  fired_M = jnp.zeros((cfg.d_sae,), jnp.int32).at[idx_BK.reshape(-1)].max(
      (vals_BK > 0).reshape(-1).astype(jnp.int32)) > 0
  return _Terms(mse + cfg.aux_alpha * aux_loss, mse, x_hat_BD, fired_M,
                jnp.mean(jnp.sum(vals_BK > 0, -1)), aux_loss=aux_loss)


# ---- batchtopk, matryoshka: k*B per batch, AuxK, EMA inference threshold

def _batch_topk_codes(cfg, aux, b: _Batch):
  """(z_BM = ReLU(pre), keep_BM: the k*B largest of the batch, codes f_BM = z * keep)."""
  B = b.x_BD.shape[0]
  z_BM = jax.nn.relu(b.pre_BM)
  thr = batch_kth_largest(z_BM, cfg.k_max * B, aux["k"] * B, b.mesh)
  keep_BM = (b.pre_BM >= thr) & (b.pre_BM > 0)
  return z_BM, keep_BM, z_BM * keep_BM.astype(z_BM.dtype)


def _threshold_ema(cfg, aux, z_BM, keep_BM, step):
  """The EMA of the smallest kept activation (started at the first one), from
  threshold_ema_start on; no gradient."""
  min_pos = jnp.min(jnp.where(keep_BM, z_BM, jnp.inf))
  min_pos = jnp.where(jnp.isfinite(min_pos), min_pos, aux["threshold"])
  old = aux["threshold"]
  ema = jnp.where(old < 0, min_pos, cfg.threshold_ema * old + (1 - cfg.threshold_ema) * min_pos)
  return lax.stop_gradient(
      jnp.where(step >= cfg.threshold_ema_start, ema, old)).astype(jnp.float32)


def _batch_topk_terms(cfg, params, aux, b: _Batch, z_BM, keep_BM, recon, mse, x_hat_BD,
                      extra=None) -> _Terms:
  aux_loss, _ = _auxk(cfg, params, b.pre_BM, b.x_BD, b.y_BD - x_hat_BD, b.dead_M, b.mesh,
                      b.run_auxk)
  return _Terms(recon + cfg.aux_alpha * aux_loss, mse, x_hat_BD, jnp.any(keep_BM, axis=0),
                jnp.mean(jnp.sum(keep_BM, -1)), aux_loss=aux_loss, extra=extra,
                threshold=_threshold_ema(cfg, aux, z_BM, keep_BM, b.step))


def _loss_batchtopk(cfg, params, aux, b: _Batch) -> _Terms:
  z_BM, keep_BM, f_BM = _batch_topk_codes(cfg, aux, b)
  x_hat_BD = f_BM @ b.w_dec_MD + b.base_BD
  mse = jnp.mean(_sq(b.y_BD - x_hat_BD))
  return _batch_topk_terms(cfg, params, aux, b, z_BM, keep_BM, mse, mse, x_hat_BD)


def _loss_matryoshka(cfg, params, aux, b: _Batch) -> _Terms:
  """The mean over nested prefixes (cfg.widths) of each prefix's reconstruction error."""
  z_BM, keep_BM, f_BM = _batch_topk_codes(cfg, aux, b)
  losses, extra = [], {}
  for w in cfg.widths:
    prefix_M = (jnp.arange(cfg.d_sae) < w).astype(f_BM.dtype)
    x_hat_BD = (f_BM * prefix_M) @ b.w_dec_MD + b.base_BD
    losses.append(jnp.mean(_sq(b.y_BD - x_hat_BD)))
    extra[f"mse_prefix_{w}"] = losses[-1]
  return _batch_topk_terms(cfg, params, aux, b, z_BM, keep_BM, jnp.mean(jnp.stack(losses)),
                           losses[-1], x_hat_BD, extra)


LOSSES: dict[str, Callable[..., _Terms]] = {
    "relu": _loss_relu, "relu_classic": _loss_relu_classic, "topk": _loss_topk,
    "batchtopk": _loss_batchtopk, "jumprelu": _loss_jumprelu,
    "jumprelu_tanh": _loss_jumprelu_tanh, "matryoshka": _loss_matryoshka}
assert tuple(LOSSES) == ARCHITECTURES


def _metrics(cfg, aux, b: _Batch, t: _Terms):
  """The metrics every architecture reports, and the new aux (dead-latent counters, and the
  inference threshold where the architecture has one)."""
  new_aux = dict(aux)
  metrics = dict(t.extra or {})
  if t.threshold is not None:
    new_aux["threshold"] = metrics["threshold"] = t.threshold
  new_aux["tokens_since_fired"] = _fired_and_update(cfg, aux, t.fired_M, b.x_BD.shape[0])
  xc_BD = b.y_BD - jnp.mean(b.y_BD, axis=0)
  zero = jnp.float32(0.0)
  metrics.update(
      loss=t.loss, mse=t.mse, l0=t.l0, sparsity_loss=zero if t.sparsity is None else t.sparsity,
      aux_loss=zero if t.aux_loss is None else t.aux_loss,
      explained_variance=1.0 - jnp.sum(_sq(b.y_BD - t.x_hat_BD)) / jnp.sum(_sq(xc_BD)),
      dead_fraction=jnp.mean(new_aux["tokens_since_fired"] >= cfg.dead_tokens),
      sparsity_coef=b.lam)
  return {k: lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()}, new_aux


def _base(cfg: SAEConfig, params, x_BD):
  """b_dec, plus the skip term x W_skip^T of a skip transcoder (normalised units)."""
  if not cfg.skip:
    return params["b_dec"]
  return params["b_dec"] + x_BD @ params["W_skip"].T


def _loss_one(cfg: SAEConfig, params, aux, x_raw_BD, step, mesh, run_auxk, y_raw_BD=None):
  """Loss, metrics and new aux of ONE SAE (or transcoder: target y_raw) on one batch
  (normalised inside): the shared inputs, the architecture's loss from LOSSES, then the
  shared metrics."""
  x_BD = x_raw_BD.astype(jnp.float32) * aux["norm_scale"]
  y_BD = (x_BD if not cfg.transcoder
          else y_raw_BD.astype(jnp.float32) * aux["norm_scale_out"])
  warm = 1.0 if cfg.sparsity_warmup_steps <= 0 else jnp.minimum(
      1.0, (step.astype(jnp.float32) + 1.0) / cfg.sparsity_warmup_steps)
  lam = aux["coef"] * warm
  w_dec_MD = _w_dec(cfg, params)
  dec_norm_M = jnp.sqrt(_row_sums(params["W_dec"] * params["W_dec"])[:, 0])
  pre_BM = pre_activation(cfg, params, x_BD)
  dead_M = aux["tokens_since_fired"] >= cfg.dead_tokens
  b = _Batch(x_BD, y_BD, _base(cfg, params, x_BD), pre_BM, w_dec_MD, dec_norm_M, dead_M, lam, step, mesh, run_auxk)
  terms = LOSSES[cfg.architecture](cfg, params, aux, b)
  metrics, new_aux = _metrics(cfg, aux, b, terms)
  return terms.loss, (metrics, new_aux)


def unrolled_sweep(cfg: SAEConfig) -> bool:
  """Whether a sweep runs as one program with a static loop over its SAEs (each at its own k)
  instead of vmapped over the SAE axis.  sweep_mode='auto' unrolls on CPU, and for a sweep of
  k on the sparse TopK path anywhere.  Measured on 2 CPU cores, d_in 768, d_sae 16384,
  batch 1024: ReLU sweep of 4 coefficients 4.61 s vmapped, 4.12 s unrolled, 4 x 1.00 s one
  at a time; TopK sweep k = 16..128 (sparse) 2.5 s vmapped (under vmap every SAE does the
  work of the largest k: the rank loops and the top-k are masked, not shortened), 1.71 s
  unrolled, 1.69 s one at a time.  Accelerators keep vmap, whose batched matmuls fill them."""
  if cfg.n_saes <= 1 or cfg.sweep_mode == "vmap":
    return False
  if cfg.sweep_mode == "unroll":
    return True
  return (jax.default_backend() == "cpu"
          or (cfg.architecture == "topk" and cfg.sparse_decode and len(set(cfg.ks)) > 1))


def make_loss(cfg: SAEConfig, mesh: Mesh | None = None):
  """loss(params, aux, batch, key, step) -> (summed loss, (metrics, new_aux)) for S SAEs.

  `batch` is the raw activations x [B, D] (or a dict with key 'x').  Each SAE's gradient only
  sees its own loss term, so summing trains the S SAEs independently.  Metrics are scalars:
  'name' for one SAE, 'name/i' per SAE of a sweep.
  """
  validate(cfg, mesh)

  def loss(params, aux, batch, key, step):
    del key
    x, y = split_pair(cfg, batch)
    lead = (None, None) if cfg.sources else (None,)
    chex.assert_shape(x, lead + (cfg.d_in,))
    chex.assert_shape(y, lead + (cfg.d_target,))
    step = jnp.asarray(step, jnp.int32)
    # Whether any SAE of the sweep has a dead latent: one unbatched flag, so AuxK's lax.cond
    # stays a real branch under the sweep's vmap (a batched predicate would turn it into a
    # select that runs the k_aux top-k of every SAE on every step).
    run_auxk = jnp.any(aux["tokens_since_fired"] >= cfg.dead_tokens)
    pick = lambda v, i: v[:, cfg.sources[i]] if cfg.sources else v
    one = lambda p, a, xi, yi: _loss_one(cfg, p, a, xi, step, mesh, run_auxk, yi)
    if cfg.n_saes == 1:   # no vmap: lax.cond inside stays a real branch
      l, (m, a) = one(select(params, 0), select(aux, 0), pick(x, 0), pick(y, 0))
      losses, mets, new_aux = jax.tree.map(lambda v: v[None], (l, m, a))
    elif unrolled_sweep(cfg):
      outs = [_loss_one(dataclasses.replace(cfg, k=int(k_i), sparsity_coef=float(c_i)),
                        select(params, i), select(aux, i), pick(x, i), step, mesh, run_auxk,
                        pick(y, i))
              for i, (k_i, c_i) in enumerate(zip(cfg.ks, cfg.coefs))]
      losses, mets, new_aux = jax.tree.map(lambda *v: jnp.stack(v),
                                           *[(l, m, a) for l, (m, a) in outs])
    elif cfg.sources:     # each dictionary reads its own layer of the batch
      src = jnp.asarray(cfg.sources)
      losses, (mets, new_aux) = jax.vmap(one, in_axes=(0, 0, 1, 1))(
          params, aux, jnp.take(x, src, axis=1), jnp.take(y, src, axis=1))
    else:
      losses, (mets, new_aux) = jax.vmap(one, in_axes=(0, 0, None, None))(params, aux, x, y)
    return jnp.sum(losses), (flatten_metrics(mets, cfg.n_saes), new_aux)

  return loss


def flatten_metrics(mets: dict, n: int) -> dict:
  if n == 1:
    return {k: v[0] for k, v in mets.items()}
  out = {}
  for k, v in mets.items():
    for i in range(n):
      out[f"{k}/{i}"] = v[i]
  return out


def post_update(cfg: SAEConfig):
  """After each optimizer update: unit-norm decoder rows where the architecture wants them."""
  def fn(params, aux):
    del aux
    if cfg.architecture not in UNIT_NORM_DECODER:
      return params
    w = params["W_dec"]
    out = dict(params)
    out["W_dec"] = w * lax.rsqrt(jnp.maximum(_row_sums(w * w), 1e-24))
    return out
  return fn


def param_rules():
  """Sharding rules for stacked params [S, ...]: latents over `model`."""
  return [(r"W_enc_MD$", P(None, MODEL, None)), (r"W_dec$", P(None, MODEL, None)),
          (r"b_enc$", P(None, MODEL)), (r"threshold$", P(None, MODEL))]


def aux_rules():
  return [(r"tokens_since_fired$", P(None, MODEL))]


def select(tree, i: int):
  """The i-th SAE of a stacked pytree."""
  return jax.tree.map(lambda v: v[i], tree)
