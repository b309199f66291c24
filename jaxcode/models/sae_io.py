"""SAE interop: export to the SAELens layout, import SAELens and Gemma Scope files.

Export writes ``cfg.json`` and ``sae_weights.safetensors`` with W_enc [d_in, d_sae],
W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] and, for JumpReLU-form SAEs, threshold
[d_sae].  Everything is folded into raw input units: with s the normalisation scalar and
b_dec subtracted before encoding (``apply_b_dec_to_input`` in SAELens terms),

    W_enc' = s W_enc,  b_enc' = b_enc - b_dec W_enc,  W_dec' = W_dec / s,  b_dec' = b_dec / s,

so the exported file encodes raw activations with ``apply_b_dec_to_input = false`` and
``normalize_activations = "none"``.  Architecture names: relu / relu_classic -> "standard",
topk -> "topk" (with k), jumprelu / jumprelu_tanh -> "jumprelu", batchtopk / matryoshka ->
"jumprelu" with every threshold equal to the EMA global threshold.

Import returns an ``ExternalSAE`` (numpy arrays and the SAELens semantics) with ``encode`` and
``decode`` functions, for SAELens-format directories and Gemma Scope ``params.npz`` files.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxcode.models import sae as sae_lib
from jaxcode.errors import ConfigError

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
SAELENS_ARCHS = ("standard", "topk", "jumprelu")


@dataclasses.dataclass
class ExternalSAE:
  architecture: str            # standard | topk | jumprelu (SAELens names)
  W_enc: np.ndarray            # [d_in, d_sae]
  b_enc: np.ndarray            # [d_sae]
  W_dec: np.ndarray            # [d_sae, d_in]
  b_dec: np.ndarray            # [d_in]
  threshold: np.ndarray | None = None
  k: int | None = None
  apply_b_dec_to_input: bool = False
  cfg: dict = dataclasses.field(default_factory=dict)

  @property
  def d_in(self) -> int:
    return self.W_enc.shape[0]

  @property
  def d_sae(self) -> int:
    return self.W_enc.shape[1]


def exported_arrays(cfg: sae_lib.SAEConfig, params, aux) -> tuple[str, dict, dict]:
  """(SAELens architecture, arrays in raw units, extra cfg fields) of ONE SAE."""
  p = {k: np.asarray(v, np.float32) for k, v in params.items()}
  s = float(np.asarray(aux["norm_scale"]))
  w_enc, b_enc, w_dec, b_dec = p["W_enc_MD"].T, p["b_enc"], p["W_dec"], p["b_dec"]
  if w_enc.ndim != 2:
    raise ConfigError(f"export expects one SAE's params (W_enc_MD 2-D), got W_enc of shape "
                      f"{w_enc.shape}; use sae.select(params, i)")
  if cfg.architecture in sae_lib.SUBTRACT_B_DEC:
    b_enc = b_enc - b_dec @ w_enc
  out = {"W_enc": w_enc * s, "b_enc": b_enc, "W_dec": w_dec / s, "b_dec": b_dec / s}
  extra = {}
  a = cfg.architecture
  if a in ("relu", "relu_classic"):
    arch = "standard"
  elif a == "topk":
    arch = "topk"
    extra["k"] = int(np.asarray(aux["k"]))
  else:
    arch = "jumprelu"
    if a in sae_lib.BATCH_TOPK_FAMILY:
      thr = np.full((cfg.d_sae,), float(np.asarray(aux["threshold"])), np.float32)
    else:
      thr = p["threshold"]
    out["threshold"] = thr.astype(np.float32)
  return arch, {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}, extra


def export_saelens(directory: str, cfg: sae_lib.SAEConfig, params, aux,
                   metadata: dict | None = None) -> str:
  """Writes one SAE (unstacked params/aux) as cfg.json + sae_weights.safetensors."""
  arch, arrays, extra = exported_arrays(cfg, params, aux)
  os.makedirs(directory, exist_ok=True)
  conf = {
      "architecture": arch, "d_in": int(cfg.d_in), "d_sae": int(cfg.d_sae),
      "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
      "normalize_activations": "none", "reshape_activations": "none",
      **extra,
      "metadata": {"jaxcode_architecture": cfg.architecture,
                   "normalisation": cfg.normalisation,
                   "norm_scale_folded": float(np.asarray(aux["norm_scale"])),
                   **(metadata or {})},
  }
  if arch == "topk":
    conf["activation_fn_kwargs"] = {"k": extra["k"]}
  tmp = os.path.join(directory, WEIGHTS + ".tmp")
  save_file(arrays, tmp)
  os.replace(tmp, os.path.join(directory, WEIGHTS))
  tmp = os.path.join(directory, CFG + ".tmp")
  with open(tmp, "w") as f:
    json.dump(conf, f, indent=1)
  os.replace(tmp, os.path.join(directory, CFG))
  return directory


def _arch_from_cfg(conf: dict) -> str:
  arch = conf.get("architecture") or conf.get("activation_fn_str") or "standard"
  arch = {"relu": "standard", "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}.get(
      arch, arch)
  if arch not in SAELENS_ARCHS:
    raise ConfigError(f"SAELens architecture={arch!r}: expected one of {SAELENS_ARCHS}")
  return arch


def load_saelens(directory: str) -> ExternalSAE:
  """Reads a SAELens-format directory (cfg.json + sae_weights.safetensors)."""
  cpath, wpath = os.path.join(directory, CFG), os.path.join(directory, WEIGHTS)
  for p in (cpath, wpath):
    if not os.path.exists(p):
      raise ConfigError(f"SAELens directory {directory!r}: missing {os.path.basename(p)}")
  with open(cpath) as f:
    conf = json.load(f)
  w = load_file(wpath)
  arch = _arch_from_cfg(conf)
  if conf.get("normalize_activations", "none") not in ("none", None):
    raise ConfigError(f"normalize_activations={conf['normalize_activations']!r} in {cpath}: "
                      "only 'none' (scale folded into the weights) is supported")
  thr = w.get("threshold")
  if thr is None and "log_threshold" in w:
    thr = np.exp(w["log_threshold"])
  if arch == "jumprelu" and thr is None:
    raise ConfigError(f"{wpath}: a jumprelu SAE needs 'threshold' or 'log_threshold'")
  k = conf.get("k", (conf.get("activation_fn_kwargs") or {}).get("k"))
  if arch == "topk" and k is None:
    raise ConfigError(f"{cpath}: a topk SAE needs 'k'")
  sae = ExternalSAE(arch, *(np.asarray(w[n], np.float32) for n in ("W_enc", "b_enc", "W_dec",
                                                                   "b_dec")),
                    threshold=None if thr is None else np.asarray(thr, np.float32),
                    k=None if k is None else int(k),
                    apply_b_dec_to_input=bool(conf.get("apply_b_dec_to_input", False)), cfg=conf)
  _check_shapes(sae, conf, directory)
  return sae


def load_gemma_scope_npz(path: str) -> ExternalSAE:
  """Reads a Gemma Scope ``params.npz`` (W_enc, W_dec, b_enc, b_dec, threshold): JumpReLU."""
  if not os.path.exists(path):
    raise ConfigError(f"Gemma Scope file {path!r} does not exist")
  with np.load(path) as z:
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in z]
    if missing:
      raise ConfigError(f"{path}: missing arrays {missing} (expected a Gemma Scope params.npz)")
    arrs = {k: np.asarray(z[k], np.float32) for k in z.files}
  sae = ExternalSAE("jumprelu", arrs["W_enc"], arrs["b_enc"], arrs["W_dec"], arrs["b_dec"],
                    threshold=arrs["threshold"], cfg={"source": "gemma_scope"})
  _check_shapes(sae, {}, path)
  return sae


def _check_shapes(sae: ExternalSAE, conf: dict, where: str):
  d, m = sae.W_enc.shape
  want = {"W_dec": (m, d), "b_enc": (m,), "b_dec": (d,)}
  if sae.threshold is not None:
    want["threshold"] = (m,)
  for name, shape in want.items():
    if getattr(sae, name).shape != shape:
      raise ConfigError(f"{where}: {name} has shape {getattr(sae, name).shape}, expected {shape}")
  for key, val in (("d_in", d), ("d_sae", m)):
    if key in conf and int(conf[key]) != val:
      raise ConfigError(f"{where}: cfg {key}={conf[key]} but W_enc is {sae.W_enc.shape}")


def encode(sae: ExternalSAE, x_BD):
  """SAELens semantics: standard ReLU, topk (top-k of pre, then ReLU), jumprelu."""
  x = jnp.asarray(x_BD, jnp.float32)
  if x.shape[-1] != sae.d_in:
    raise ConfigError(f"input d_in={x.shape[-1]} does not match the SAE's d_in={sae.d_in}")
  if sae.apply_b_dec_to_input:
    x = x - sae.b_dec
  pre = x @ sae.W_enc + sae.b_enc
  if sae.architecture == "standard":
    return jnp.maximum(pre, 0)
  if sae.architecture == "topk":
    import jax
    v, i = jax.lax.top_k(pre, sae.k)
    rows = jnp.arange(pre.shape[0])[:, None]
    return jnp.zeros_like(pre).at[rows, i].set(jnp.maximum(v, 0))
  return jnp.maximum(pre, 0) * (pre > sae.threshold)


def decode(sae: ExternalSAE, f_BM):
  return jnp.asarray(f_BM, jnp.float32) @ sae.W_dec + sae.b_dec
