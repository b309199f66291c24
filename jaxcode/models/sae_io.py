"""Dictionary interop: the imported-dictionary type, SAELens export and import, Gemma Scope 1.

``ExternalSAE`` is any imported sparse dictionary (SAE, transcoder, skip transcoder) in one
orientation and one set of semantics; ``sae_formats`` reads the other published layouts into it
and ``sae_formats.load_dictionary`` picks the reader from the files present.

ExternalSAE semantics (x [..., d_in] raw activations at ``hook_in``; shapes W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out], threshold [d_sae], W_skip [d_in, d_out]):

    x_n  = x * input_scale                    (1 unless the format normalises its inputs)
    x_n  = x_n - b_dec                        only if apply_b_dec_to_input (needs d_out = d_in)
    pre  = x_n W_enc + b_enc
    f    = standard: ReLU(pre);  jumprelu: ReLU(pre) * [pre > threshold];
           topk: ReLU of the k largest pre, 0 elsewhere;  abstopk: pre at the k largest |pre|;
           groupmax: the latents in k contiguous groups of d_sae/k, ReLU of each group's max
    y_n  = f W_dec + b_dec (+ (x * input_scale) W_skip when W_skip is set)
    y    = y_n / output_scale                 raw activations at ``hook_out``

``kind`` is 'sae' (hook_out = hook_in), 'transcoder' or 'skip_transcoder' (W_skip set).

SAELens layout (``cfg.json`` + ``sae_weights.safetensors``; sae_lens 6.54 read for this):

* Tensors W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, threshold (kept iff pre
  > threshold; old files: log_threshold), W_skip [d_out, d_in] applied as x W_skip^T (so ours
  is its transpose); transcoders never subtract b_dec and default apply_b_dec_to_input off.
* cfg.json of 6.x: architecture fields at the top, model facts in a ``metadata`` block
  (model_name, hook_name, hook_name_out, context_size, dataset_path, ..., sae_lens_version).
  A file whose sae_lens_version (top level or in metadata) is missing or < 6 is a pre-6.0 flat
  config: hook_point -> hook_name, activation_fn_str 'topk' + activation_fn_kwargs.k -> topk,
  apply_b_dec_to_input defaults to true, boolean normalize_activations, and an optional
  ``scaling_factor`` tensor (finetuning scale, folded here into the rows of W_dec).
* Architectures: standard, topk, abstopk, jumprelu, transcoder, skip_transcoder,
  jumprelu_transcoder, jumprelu_skip_transcoder; training checkpoints batchtopk and
  matryoshka_batchtopk become the JumpReLU SAELens turns them into at inference
  (``save_inference_model``): every threshold equal to the scalar ``topk_threshold``.
* ``rescale_acts_by_decoder_norm`` (default true in SAELens' TopK training config and written
  by ``save_model``): SAELens multiplies pre by ||W_dec_i|| before the activation and divides
  the codes by it before decoding.  We fold it as SAELens' own ``_fold_norm_topk`` does at
  inference export (W_enc * n, b_enc * n, W_dec / n with n = max(||W_dec_i||, 1e-8)), which
  gives the same codes and reconstructions; the imported W_dec then has unit rows.
* normalize_activations: 'none'; 'expected_average_only_in' only with the scale factor passed
  in (it is not in the file; SAELens reads it from its pretrained_saes.yaml) - it becomes
  input_scale = output_scale; per-token normalisations are refused.

Export writes one of our SAEs in that layout, everything folded into raw input units: with s
the normalisation scalar and b_dec subtracted before encoding,

    W_enc' = s W_enc,  b_enc' = b_enc - b_dec W_enc,  W_dec' = W_dec / s,  b_dec' = b_dec / s,

so the file encodes raw activations with apply_b_dec_to_input = false and normalize_activations
= 'none'.  relu / relu_classic -> 'standard', topk -> 'topk' (with k, no decoder-norm
rescaling), jumprelu / jumprelu_tanh -> 'jumprelu', batchtopk / matryoshka -> 'jumprelu' with
every threshold equal to the EMA global threshold.  cfg.json carries ``sae_lens_version`` in a
SAELens-6 ``metadata`` block, so SAELens reads it as a 6.x file and keeps the metadata.

``export_saelens_external`` writes any ExternalSAE the same way (what the transcoder training
builds from its parameters, or an imported dictionary): input_scale, output_scale and the b_dec
subtraction folded (``external_raw_arrays``); kind 'sae' -> standard | topk | abstopk |
jumprelu; transcoders -> transcoder | jumprelu_transcoder, with W_skip -> skip_transcoder |
jumprelu_skip_transcoder (cfg ``d_out``, metadata ``hook_name`` = hook_in and ``hook_name_out``
= hook_out, W_skip stored [d_out, d_in]).  SAELens 6.54 has no TopK transcoder: such a
transcoder is refused here (circuit-tracer's transcoder-set layout, ``transcoder_io``, holds it).

Gemma Scope 1 ``params.npz``: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec,
threshold (lower-case w_* also accepted); JumpReLU on raw activations, no b_dec subtraction.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxcode.errors import ConfigError
from jaxcode.models import sae as sae_lib

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
SAELENS_VERSION = "6.54.12"          # the SAELens release this layout was checked against
ACTIVATIONS = ("standard", "topk", "abstopk", "jumprelu", "groupmax")
KINDS = ("sae", "transcoder", "skip_transcoder")
# SAELens architecture -> (our activation, kind)
SAELENS_ARCHS = {
    "standard": ("standard", "sae"), "topk": ("topk", "sae"), "abstopk": ("abstopk", "sae"),
    "jumprelu": ("jumprelu", "sae"), "batchtopk": ("jumprelu", "sae"),
    "matryoshka_batchtopk": ("jumprelu", "sae"), "transcoder": ("standard", "transcoder"),
    "skip_transcoder": ("standard", "skip_transcoder"),
    "jumprelu_transcoder": ("jumprelu", "transcoder"),
    "jumprelu_skip_transcoder": ("jumprelu", "skip_transcoder"),
}
BATCHTOPK_ARCHS = ("batchtopk", "matryoshka_batchtopk")
TOPK_ARCHS = ("topk", "abstopk") + BATCHTOPK_ARCHS
# the metadata fields SAELens 6 reads (sae_lens/loading/pretrained_sae_loaders.py)
SAELENS_METADATA_KEYS = (
    "model_name", "hook_name", "hook_head_index", "hook_name_out", "hook_head_index_out",
    "hf_hook_name", "hf_hook_name_out", "model_class_name", "model_from_pretrained_kwargs",
    "prepend_bos", "exclude_special_tokens", "context_size", "seqpos_slice", "dataset_path",
    "neuronpedia_id", "sae_lens_version", "sae_lens_training_version")


@dataclasses.dataclass
class ExternalSAE:
  architecture: str            # activation: standard | topk | abstopk | jumprelu | groupmax
  W_enc: np.ndarray            # [d_in, d_sae]
  b_enc: np.ndarray            # [d_sae]
  W_dec: np.ndarray            # [d_sae, d_out]
  b_dec: np.ndarray            # [d_out]
  threshold: np.ndarray | None = None     # [d_sae], jumprelu
  k: int | None = None                    # topk, abstopk, groupmax
  apply_b_dec_to_input: bool = False
  cfg: dict = dataclasses.field(default_factory=dict)   # the file's own config, as read
  kind: str = "sae"                       # sae | transcoder | skip_transcoder
  W_skip: np.ndarray | None = None        # [d_in, d_out]: y += x W_skip
  input_scale: float = 1.0                # x_n = x * input_scale
  output_scale: float = 1.0               # y = y_n / output_scale
  hook_in: str | None = None
  hook_out: str | None = None
  layout: str = "saelens"

  @property
  def d_in(self) -> int:
    return self.W_enc.shape[0]

  @property
  def d_sae(self) -> int:
    return self.W_enc.shape[1]

  @property
  def d_out(self) -> int:
    return self.W_dec.shape[-1]


# ------------------------------------------------------------------ export

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
    extra["rescale_acts_by_decoder_norm"] = False
  else:
    arch = "jumprelu"
    if a in sae_lib.BATCH_TOPK_FAMILY:
      thr = np.full((cfg.d_sae,), float(np.asarray(aux["threshold"])), np.float32)
    else:
      thr = p["threshold"]
    out["threshold"] = thr.astype(np.float32)
  return arch, {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}, extra


def _export_metadata(cfg: sae_lib.SAEConfig, aux, metadata: dict | None, facts: dict) -> dict:
  """The SAELens-6 metadata block: its known fields (null when unknown), then ours."""
  meta = {key: None for key in SAELENS_METADATA_KEYS}
  meta.update({k: v for k, v in facts.items() if v is not None})
  meta["sae_lens_version"] = SAELENS_VERSION
  meta.update({"jaxcode_architecture": cfg.architecture, "normalisation": cfg.normalisation,
               "norm_scale_folded": float(np.asarray(aux["norm_scale"]))})
  meta.update(metadata or {})
  return meta


def export_saelens(directory: str, cfg: sae_lib.SAEConfig, params, aux,
                   metadata: dict | None = None, *, model_name: str | None = None,
                   hook_name: str | None = None, hf_hook_name: str | None = None,
                   context_size: int | None = None, dataset_path: str | None = None,
                   prepend_bos: bool | None = None,
                   model_class_name: str | None = None) -> str:
  """Writes one SAE (unstacked params/aux) as cfg.json + sae_weights.safetensors.

  The keyword facts fill SAELens' metadata fields; ``metadata`` adds free-form entries (kept
  by SAELens 6 too)."""
  arch, arrays, extra = exported_arrays(cfg, params, aux)
  facts = dict(model_name=model_name, hook_name=hook_name, hf_hook_name=hf_hook_name,
               context_size=context_size, dataset_path=dataset_path, prepend_bos=prepend_bos,
               model_class_name=model_class_name)
  conf = {
      "architecture": arch, "d_in": int(cfg.d_in), "d_sae": int(cfg.d_sae),
      "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
      "normalize_activations": "none", "reshape_activations": "none", **extra,
      "metadata": _export_metadata(cfg, aux, metadata, facts),
  }
  if arch == "topk":
    conf["activation_fn_kwargs"] = {"k": extra["k"]}       # read by pre-6.0 SAELens
  return _write_saelens(directory, arrays, conf)


def _write_saelens(directory: str, arrays: dict, conf: dict) -> str:
  """The two SAELens files, each written to a temporary name and renamed."""
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, WEIGHTS + ".tmp")
  save_file(arrays, tmp)
  os.replace(tmp, os.path.join(directory, WEIGHTS))
  tmp = os.path.join(directory, CFG + ".tmp")
  with open(tmp, "w") as f:
    json.dump(conf, f, indent=1)
  os.replace(tmp, os.path.join(directory, CFG))
  return directory


# ------------------------------------------------------------------ export of an ExternalSAE

def _external_arch(sae: ExternalSAE, where: str) -> str:
  """The SAELens 6 architecture of an ExternalSAE (ConfigError where SAELens has none)."""
  act, skip = sae.architecture, sae.W_skip is not None
  if sae.kind == "sae":
    if skip or sae.d_out != sae.d_in:
      raise ConfigError(f"{where}: kind='sae' with W_skip set or d_out={sae.d_out} != d_in="
                        f"{sae.d_in}: expected kind 'transcoder' or 'skip_transcoder'")
    if act == "groupmax":
      raise ConfigError(f"{where}: activation 'groupmax' has no SAELens architecture: "
                        "expected standard, topk, abstopk or jumprelu")
    return act
  if act not in ("standard", "jumprelu"):
    raise ConfigError(f"{where}: a {act} {sae.kind}: SAELens {SAELENS_VERSION} has "
                      "transcoders with ReLU or JumpReLU only (expected activation 'standard' "
                      "or 'jumprelu'; circuit-tracer's transcoder set holds TopK ones)")
  base = "skip_transcoder" if skip else "transcoder"
  return base if act == "standard" else "jumprelu_" + base


def external_raw_arrays(sae: ExternalSAE) -> dict:
  """W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec, threshold, W_skip [d_in, d_out]
  of an ExternalSAE on raw activations: input_scale, output_scale and the b_dec subtraction
  folded in (W_enc s_in, b_enc - b_dec W_enc, W_dec / s_out, b_dec / s_out,
  W_skip s_in / s_out), so that pre = x W_enc + b_enc and y = f W_dec + b_dec + x W_skip.
  Arrays pass through unchanged (bitwise) when there is nothing to fold."""
  s_in, s_out = float(sae.input_scale), float(sae.output_scale)
  w_enc, b_enc = sae.W_enc, sae.b_enc
  if sae.apply_b_dec_to_input:
    b_enc = b_enc.astype(np.float64) - sae.b_dec.astype(np.float64) @ w_enc.astype(np.float64)
  out = {"W_enc": w_enc if s_in == 1.0 else w_enc.astype(np.float64) * s_in, "b_enc": b_enc,
         "W_dec": sae.W_dec, "b_dec": sae.b_dec}
  if s_out != 1.0:
    out["W_dec"], out["b_dec"] = (sae.W_dec.astype(np.float64) / s_out,
                                  sae.b_dec.astype(np.float64) / s_out)
  if sae.threshold is not None:
    out["threshold"] = sae.threshold
  if sae.W_skip is not None:
    ratio = s_in / s_out
    out["W_skip"] = sae.W_skip if ratio == 1.0 else sae.W_skip.astype(np.float64) * ratio
  return {k: f32(v) for k, v in out.items()}


def export_saelens_external(directory: str, sae: ExternalSAE, metadata: dict | None = None
                            ) -> str:
  """Writes any ExternalSAE (SAE or transcoder) as a SAELens 6 folder, on raw activations.

  Architectures: standard | topk | abstopk | jumprelu for kind 'sae'; transcoder,
  skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder for transcoders (cfg d_out,
  W_skip stored [d_out, d_in]).  Scales and the b_dec subtraction are folded
  (``external_raw_arrays``), so the file has apply_b_dec_to_input = false and
  normalize_activations = 'none'.  The metadata block: SAELens' fields (null when unknown),
  hook_name = sae.hook_in and hook_name_out = sae.hook_out, then ``metadata`` (any keys)."""
  validate(sae, directory)
  arch = _external_arch(sae, directory)
  arrays = external_raw_arrays(sae)
  if "W_skip" in arrays:
    arrays["W_skip"] = np.ascontiguousarray(arrays["W_skip"].T)
  meta = {key: None for key in SAELENS_METADATA_KEYS}
  meta.update(hook_name=sae.hook_in, hook_name_out=sae.hook_out if sae.kind != "sae" else None,
              sae_lens_version=SAELENS_VERSION, jaxcode_layout=sae.layout,
              input_scale_folded=float(sae.input_scale),
              output_scale_folded=float(sae.output_scale))
  meta.update(metadata or {})
  conf = {"architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
          "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
          "reshape_activations": "none"}
  if sae.kind != "sae":
    conf["d_out"] = sae.d_out
  if arch in ("topk", "abstopk"):
    conf.update(k=int(sae.k), rescale_acts_by_decoder_norm=False,
                activation_fn_kwargs={"k": int(sae.k)})
  conf["metadata"] = meta
  return _write_saelens(directory, arrays, conf)


# ------------------------------------------------------------------ shared reading helpers

def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      conf = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: cannot read JSON ({type(e).__name__}): expected a config "
                      "object") from None
  if not isinstance(conf, dict):
    raise ConfigError(f"{path}: holds a {type(conf).__name__}, expected a JSON object")
  return conf


def read_tensors(path: str) -> dict:
  """All tensors of a safetensors file as numpy arrays (bf16 and f64 kept as stored)."""
  try:
    return load_file(path)
  except Exception as e:                                   # noqa: BLE001 - one line out
    raise ConfigError(f"{path}: cannot read safetensors ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:80]})") from None


def require(arrays: dict, names, where: str, what: str):
  missing = [n for n in names if n not in arrays]
  if missing:
    raise ConfigError(f"{where}: missing tensors {missing} (have {sorted(arrays)[:8]}): "
                      f"expected {what}")


def f32(a) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(a, np.float32))


def decoder_row_norms(w_dec_MO: np.ndarray) -> np.ndarray:
  """||W_dec_i|| per latent, clamped at 1e-8 as SAELens' fold does."""
  return np.maximum(np.linalg.norm(w_dec_MO.astype(np.float64), axis=-1), 1e-8)


def fold_decoder_norm(sae: ExternalSAE) -> ExternalSAE:
  """SAELens' rescale_acts_by_decoder_norm made explicit: W_enc*n, b_enc*n, W_dec/n."""
  n = decoder_row_norms(sae.W_dec)
  return dataclasses.replace(sae, W_enc=f32(sae.W_enc * n), b_enc=f32(sae.b_enc * n),
                             W_dec=f32(sae.W_dec / n[:, None]))


# ------------------------------------------------------------------ SAELens import

def _saelens_version(conf: dict) -> str | None:
  v = conf.get("sae_lens_version")
  meta = conf.get("metadata")
  if not v and isinstance(meta, dict):
    v = meta.get("sae_lens_version")
  return v


def _is_v6(conf: dict) -> bool:
  v = _saelens_version(conf)
  try:
    return bool(v) and int(str(v).split(".")[0]) >= 6
  except ValueError:
    return False


def saelens_config(conf: dict) -> dict:
  """A SAELens cfg.json as a 6.x config (pre-6.0 flat configs converted as SAELens does)."""
  if _is_v6(conf):
    out = dict(conf)
    out["metadata"] = dict(conf.get("metadata") or {})
    out.setdefault("architecture", "standard")
    return out
  renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
             "activation_fn_str": "activation_fn"}
  flat = {renames.get(k, k): v for k, v in conf.items()}
  flat.setdefault("apply_b_dec_to_input", True)
  flat.setdefault("architecture", "standard")
  kw = flat.get("activation_fn_kwargs") or {}
  if flat.get("activation_fn") == "topk" and kw.get("k") is not None:
    flat["architecture"], flat["k"] = "topk", kw["k"]
  norm = flat.get("normalize_activations")
  if isinstance(norm, bool) or norm is None:
    flat["normalize_activations"] = "expected_average_only_in" if norm else "none"
  meta = dict(conf.get("metadata") or {})
  meta.update({k: flat[k] for k in SAELENS_METADATA_KEYS if k in flat})
  flat["metadata"] = meta
  return flat


def _saelens_threshold(w: dict, arch: str, where: str):
  if arch in BATCHTOPK_ARCHS:
    if "topk_threshold" not in w:
      raise ConfigError(f"{where}: a {arch} checkpoint needs the scalar 'topk_threshold' "
                        "(its inference JumpReLU threshold)")
    t = np.asarray(w["topk_threshold"], np.float64)
    if t.size != 1:
      raise ConfigError(f"{where}: topk_threshold has shape {t.shape}, expected a scalar")
    return np.full(w["b_enc"].shape, float(t.reshape(())), np.float32)
  if "threshold" in w:
    return f32(w["threshold"])
  if "log_threshold" in w:
    return f32(np.exp(np.asarray(w["log_threshold"], np.float64)))
  if SAELENS_ARCHS[arch][0] == "jumprelu":
    raise ConfigError(f"{where}: a {arch} SAE needs 'threshold' or 'log_threshold'")
  return None


def _saelens_scaling(w: dict, conf: dict, w_dec: np.ndarray, where: str) -> np.ndarray:
  """Pre-6.0 finetuning scaling factor, folded into the rows of W_dec."""
  s = w.get("scaling_factor", w.get("finetuning_scaling_factor"))
  if s is None or np.allclose(np.asarray(s, np.float32), 1.0):
    return w_dec
  if np.asarray(s).shape != (w_dec.shape[0],):
    raise ConfigError(f"{where}: scaling_factor has shape {np.asarray(s).shape}, expected "
                      f"({w_dec.shape[0]},)")
  return f32(w_dec * np.asarray(s, np.float32)[:, None])


def _saelens_norm(conf: dict, kind: str, norm_scaling_factor, where: str) -> float:
  norm = conf.get("normalize_activations", "none")
  if norm == "none":
    return 1.0
  if norm == "expected_average_only_in" and kind == "sae":
    if norm_scaling_factor is None:
      raise ConfigError(f"{where}: normalize_activations='expected_average_only_in' but the "
                        "scale factor is not in the file: pass norm_scaling_factor= (SAELens' "
                        "pretrained_saes.yaml value)")
    s = float(norm_scaling_factor)
    if not (math.isfinite(s) and s > 0):
      raise ConfigError(f"norm_scaling_factor={norm_scaling_factor!r}: expected a finite "
                        "number > 0")
    return s
  raise ConfigError(f"{where}: normalize_activations={norm!r} for a {kind}: expected 'none' "
                    "(or 'expected_average_only_in' for an SAE, with norm_scaling_factor=)")


def _saelens_arch(conf: dict, where: str) -> str:
  arch = conf.get("architecture") or "standard"
  if arch not in SAELENS_ARCHS:
    raise ConfigError(f"{where}: SAELens architecture={arch!r}: expected one of "
                      f"{tuple(SAELENS_ARCHS)}")
  return arch


def _saelens_k(conf: dict, arch: str, where: str) -> int | None:
  if arch not in ("topk", "abstopk"):
    return None
  k = conf.get("k", (conf.get("activation_fn_kwargs") or {}).get("k"))
  if k is None:
    raise ConfigError(f"{where}: a {arch} SAE needs 'k'")
  return int(k)


def load_saelens(directory: str, norm_scaling_factor: float | None = None) -> ExternalSAE:
  """Reads a SAELens-format directory (cfg.json + sae_weights.safetensors), 6.x or older."""
  cpath, wpath = os.path.join(directory, CFG), os.path.join(directory, WEIGHTS)
  for p in (cpath, wpath):
    if not os.path.exists(p):
      raise ConfigError(f"SAELens directory {directory!r}: missing {os.path.basename(p)}")
  conf = saelens_config(read_json(cpath))
  w = read_tensors(wpath)
  arch = _saelens_arch(conf, cpath)
  act, kind = SAELENS_ARCHS[arch]
  require(w, ("W_enc", "b_enc", "W_dec", "b_dec"), wpath, "SAELens W_enc, b_enc, W_dec, b_dec")
  if kind == "skip_transcoder":
    require(w, ("W_skip",), wpath, "a skip transcoder's W_skip [d_out, d_in]")
  apply_b = bool(conf.get("apply_b_dec_to_input", kind == "sae"))
  if apply_b and kind != "sae":
    raise ConfigError(f"{cpath}: apply_b_dec_to_input=true for a {arch}: SAELens transcoders "
                      "never subtract b_dec")
  scale = _saelens_norm(conf, kind, norm_scaling_factor, cpath)
  meta = conf["metadata"]
  sae = ExternalSAE(
      act, f32(w["W_enc"]), f32(w["b_enc"]), _saelens_scaling(w, conf, f32(w["W_dec"]), wpath),
      f32(w["b_dec"]), threshold=_saelens_threshold(w, arch, wpath),
      k=_saelens_k(conf, arch, cpath), apply_b_dec_to_input=apply_b, cfg=conf, kind=kind,
      W_skip=None if "W_skip" not in w else f32(np.asarray(w["W_skip"]).T),
      input_scale=scale, output_scale=scale, hook_in=meta.get("hook_name"),
      hook_out=meta.get("hook_name_out") or (meta.get("hook_name") if kind == "sae" else None))
  validate(sae, directory)
  if arch in TOPK_ARCHS and conf.get("rescale_acts_by_decoder_norm", arch in BATCHTOPK_ARCHS):
    sae = fold_decoder_norm(sae)
  return sae


def load_gemma_scope_npz(path: str) -> ExternalSAE:
  """Reads a Gemma Scope 1 ``params.npz`` (W_enc, W_dec, b_enc, b_dec, threshold): JumpReLU."""
  if not os.path.exists(path):
    raise ConfigError(f"Gemma Scope file {path!r} does not exist")
  with np.load(path) as z:
    arrs = {k: np.asarray(z[k]) for k in z.files}
  arrs = {(k[0].upper() + k[1:] if k in ("w_enc", "w_dec") else k): v for k, v in arrs.items()}
  missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in arrs]
  if missing:
    raise ConfigError(f"{path}: missing arrays {missing} (expected a Gemma Scope params.npz)")
  sae = ExternalSAE("jumprelu", f32(arrs["W_enc"]), f32(arrs["b_enc"]), f32(arrs["W_dec"]),
                    f32(arrs["b_dec"]), threshold=f32(arrs["threshold"]),
                    cfg={"source": "gemma_scope"}, layout="gemma_scope_1")
  validate(sae, path)
  return sae


# ------------------------------------------------------------------ checks

def _expected_shapes(sae: ExternalSAE) -> dict:
  d, m, o = sae.W_enc.shape[0], sae.W_enc.shape[-1], sae.W_dec.shape[-1]
  want = {"W_dec": (m, o), "b_enc": (m,), "b_dec": (o,)}
  if sae.threshold is not None:
    want["threshold"] = (m,)
  if sae.W_skip is not None:
    want["W_skip"] = (d, o)
  return want


def _check_semantics(sae: ExternalSAE, where: str):
  if sae.architecture not in ACTIVATIONS:
    raise ConfigError(f"{where}: activation {sae.architecture!r}: expected one of {ACTIVATIONS}")
  if sae.kind not in KINDS:
    raise ConfigError(f"{where}: kind={sae.kind!r}: expected one of {KINDS}")
  if sae.architecture == "jumprelu" and sae.threshold is None:
    raise ConfigError(f"{where}: a jumprelu dictionary needs a threshold [d_sae]")
  if sae.architecture in ("topk", "abstopk", "groupmax"):
    if sae.k is None or not 1 <= sae.k <= sae.d_sae:
      raise ConfigError(f"{where}: k={sae.k!r}: expected an integer in [1, d_sae={sae.d_sae}]")
    if sae.architecture == "groupmax" and sae.d_sae % sae.k:
      raise ConfigError(f"{where}: groupmax k={sae.k} does not divide d_sae={sae.d_sae}")
  if sae.apply_b_dec_to_input and sae.d_out != sae.d_in:
    raise ConfigError(f"{where}: apply_b_dec_to_input needs d_out = d_in, got d_in={sae.d_in}, "
                      f"d_out={sae.d_out}")
  for name in ("input_scale", "output_scale"):
    v = getattr(sae, name)
    if not (math.isfinite(v) and v > 0):
      raise ConfigError(f"{where}: {name}={v!r}: expected a finite number > 0")


def validate(sae: ExternalSAE, where: str):
  """Shapes, activation, kind, k and scales consistent with each other and with sae.cfg."""
  if sae.W_enc.ndim != 2 or sae.W_dec.ndim != 2:
    raise ConfigError(f"{where}: W_enc {sae.W_enc.shape} and W_dec {sae.W_dec.shape} must be "
                      "2-D ([d_in, d_sae] and [d_sae, d_out])")
  for name, shape in _expected_shapes(sae).items():
    if getattr(sae, name).shape != shape:
      raise ConfigError(f"{where}: {name} has shape {getattr(sae, name).shape}, expected "
                        f"{shape}")
  dims = {"d_in": sae.d_in, "d_sae": sae.d_sae, "d_out": sae.d_out}
  for key, val in dims.items():
    got = sae.cfg.get(key)
    if isinstance(got, (int, float)) and not isinstance(got, bool) and int(got) != val:
      raise ConfigError(f"{where}: cfg {key}={got} but the weights give {key}={val} (W_enc "
                        f"{sae.W_enc.shape}, W_dec {sae.W_dec.shape})")
  _check_semantics(sae, where)


def check_width(sae: ExternalSAE, width: int, hookpoint: str, width_out: int | None = None,
                hookpoint_out: str | None = None):
  """Raises when a dictionary does not fit the model's hookpoint widths (before any compute)."""
  if sae.d_in != int(width):
    raise ConfigError(f"dictionary d_in={sae.d_in} does not match hookpoint {hookpoint} of "
                      f"width {int(width)}")
  if width_out is not None and sae.d_out != int(width_out):
    raise ConfigError(f"dictionary d_out={sae.d_out} does not match hookpoint "
                      f"{hookpoint_out or hookpoint} of width {int(width_out)}")


# ------------------------------------------------------------------ apply

def _scatter_rows(shape, idx_NK, val_NK):
  rows = jnp.arange(shape[0])[:, None]
  return jnp.zeros(shape, val_NK.dtype).at[rows, idx_NK].set(val_NK)


def _activate(sae: ExternalSAE, pre_NM):
  a = sae.architecture
  if a == "standard":
    return jnp.maximum(pre_NM, 0)
  if a == "jumprelu":
    return jnp.maximum(pre_NM, 0) * (pre_NM > jnp.asarray(sae.threshold))
  if a == "topk":
    v, i = jax.lax.top_k(pre_NM, sae.k)
    return _scatter_rows(pre_NM.shape, i, jnp.maximum(v, 0))
  if a == "abstopk":
    _, i = jax.lax.top_k(jnp.abs(pre_NM), sae.k)
    return _scatter_rows(pre_NM.shape, i, jnp.take_along_axis(pre_NM, i, axis=1))
  g_NKG = jnp.maximum(pre_NM, 0).reshape(pre_NM.shape[0], sae.k, -1)     # groupmax
  onehot = jax.nn.one_hot(jnp.argmax(g_NKG, -1), g_NKG.shape[-1], dtype=g_NKG.dtype)
  return (onehot * jnp.max(g_NKG, -1, keepdims=True)).reshape(pre_NM.shape)


def _input(sae: ExternalSAE, x) -> jnp.ndarray:
  x = jnp.asarray(x, jnp.float32)
  if x.shape[-1] != sae.d_in:
    raise ConfigError(f"input d_in={x.shape[-1]} does not match the SAE's d_in={sae.d_in}")
  return x * sae.input_scale if sae.input_scale != 1.0 else x


def encode(sae: ExternalSAE, x_BD):
  """Codes [..., d_sae] of raw activations x [..., d_in] (semantics in the module docstring)."""
  x = _input(sae, x_BD)
  if sae.apply_b_dec_to_input:
    x = x - sae.b_dec
  pre = x.reshape(-1, sae.d_in) @ sae.W_enc + sae.b_enc
  return _activate(sae, pre).reshape(x.shape[:-1] + (sae.d_sae,))


def decode(sae: ExternalSAE, f_BM, x_BD=None):
  """Output [..., d_out] in raw units; a dictionary with W_skip also needs its input x."""
  y = jnp.asarray(f_BM, jnp.float32) @ sae.W_dec + sae.b_dec
  if sae.W_skip is not None:
    if x_BD is None:
      raise ConfigError(f"this {sae.kind} has a skip connection W_skip: decode needs the input "
                        "x as well (decode(sae, codes, x))")
    y = y + _input(sae, x_BD) @ sae.W_skip
  return y / sae.output_scale if sae.output_scale != 1.0 else y


def forward(sae: ExternalSAE, x_BD):
  """decode(encode(x), x): the reconstruction (SAE) or prediction (transcoder)."""
  return decode(sae, encode(sae, x_BD), x_BD)
