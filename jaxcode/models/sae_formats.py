"""Published dictionary layouts read into ``sae_io.ExternalSAE``, and layout detection.

Every reader returns W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out],
optional threshold [d_sae] and W_skip [d_in, d_out] (y += x W_skip), in float32, with the
semantics of ``sae_io`` (its docstring). Orientation as stored, and what we do with it:

| layout        | encoder stored              | decoder stored                | extras              |
|---------------|-----------------------------|-------------------------------|---------------------|
| SAELens       | W_enc [in, sae]             | W_dec [sae, out]              | W_skip [out, in] T  |
| Gemma Scope 1 | W_enc [in, sae]             | W_dec [sae, in]               | threshold           |
| Gemma Scope 2 | w_enc [in, sae]             | w_dec [sae, out]              | threshold, affine   |
|               |                             |                               | skip [in, out]      |
| Llama Scope   | encoder.weight [sae, in] T  | decoder.weight [out, sae] T   | scalar theta, norms |
| sparsify      | encoder.weight [sae, in] T  | W_dec [sae, in]               | W_skip [in, in] T   |

(T: transposed on reading.)

* **Gemma Scope 2** (``params.safetensors`` + optional ``config.json``): JumpReLU on raw
  activations, f = ReLU(pre) [pre > threshold], pre = x w_enc + b_enc, no b_dec subtraction;
  y = f w_dec + b_dec + x affine_skip_connection for affine transcoders.  config.json:
  architecture 'jump_relu', type 'sae'|'transcoder', affine_connection, hf_hook_point_in/out
  (kept as hook_in/hook_out).  Without config.json a transcoder is recognised by its skip
  tensor, d_out != d_in, or 'transcoder' in the folder name.  A cross-layer transcoder file
  (w_dec [d_sae, n_layers, d_out]) is refused here: its folder loads with ``load_clt``.
* **Gemma Scope 2 CLT** (a folder of ``params_layer_{l}.safetensors``, l = 0..L-1, + optional
  ``config.json``; notes/circuits.md 6.4): each file holds w_enc [d_in, F], w_dec
  [F, L, d_out] (slot m writes to layer m; only slots m >= l are used, so W_dec[l] =
  w_dec[:, l:, :]), b_enc [F], b_dec [d_out] (the output bias of layer l), threshold [F] and,
  for affine CLTs, affine_skip_connection [d_in, d_out] applied as x @ A (our W_skip[l] as
  is).  JumpReLU ReLU(pre)[pre > threshold] -> ``transcoder_io.ExternalCLT``.  Every file is
  read, the last layer's too (circuit-tracer's loader loops range(max(layer)) and drops it).
  Hooks default to blocks.{layer}.mlp_in -> blocks.{layer}.mlp_out (circuit-tracer's Gemma 3
  mapping: pre_feedforward_layernorm output -> post_feedforward_layernorm output); the
  config's hf_hook_point_in/out are kept in cfg.
* **circuit-tracer** folders (``transcoder_io``): a CLT (W_enc_{l}/W_dec_{l}.safetensors +
  config.yaml) and a transcoder set (layer_{l}.safetensors + config.yaml).
* **Llama Scope** (``hyperparams.json`` + ``checkpoints/final.safetensors``), as OpenMOSS
  Language-Model-SAEs (lm_saes ``SparseAutoEncoder``) runs a checkpoint in its 'dataset-wise'
  normalisation mode, the mode the published hyperparams name:
      x_n = x * a_in,  a_in = sqrt(d_model) / avg_in   (dataset_average_activation_norm.in)
      x_n -= decoder.bias                               if apply_decoder_bias_to_pre_encoder
      pre = x_n encoder.weight^T + encoder.bias
      f   = pre * [pre * ||W_dec_i|| > theta]  (scalar jump_relu_threshold theta; without the
            decoder norm when sparsity_include_decoder_norm is false; 'relu': theta = 0)
      y   = (f decoder.weight^T + decoder.bias) / a_out,  a_out = sqrt(d_model) / avg_out
  Convention chosen: codes are in the normalised units the dictionary was trained in (so theta
  keeps its meaning); input_scale = a_in, output_scale = a_out.  The per-latent gate is folded
  into threshold_i = theta / ||W_dec_i|| (equal up to the last bit at the boundary).  SAELens'
  loader differs: one factor for in and out and theta * a_in; which one the released weights
  follow is not settled by the code - check the FVU on real activations before trusting either.
  norm_activation 'inference' means the norms are already folded (scales 1); per-token or
  per-batch normalisation is refused, as are act_fn other than jumprelu / relu.
* **sparsify** (EleutherAI; ``cfg.json`` + ``sae.safetensors``): codes = TopK (or GroupMax, k
  groups) of ReLU(encoder(x - b_dec)); transcoders (cfg transcode) skip the b_dec subtraction
  and read the module's input to predict its output (d_out = d_in); y = codes W_dec + b_dec
  (+ x W_skip^T with skip_connection).  No input normalisation.  The folder name is the
  hookpoint (``layers.10``, ``layers.10.mlp``) and becomes hook_in and hook_out.

``load_dictionary(path)`` picks the reader from the files present (a directory, or the weights
file itself): cfg.json + sae_weights.safetensors -> SAELens; cfg.json + sae.safetensors ->
sparsify; hyperparams.json + checkpoints/final.safetensors -> Llama Scope; params.safetensors
-> Gemma Scope 2; params.npz (or any .npz) -> Gemma Scope 1; W_enc_0.safetensors ->
circuit-tracer CLT; layer_{l}.safetensors -> circuit-tracer transcoder set (one layer: pass
``layer=``, or the file itself); params_layer_{l}.safetensors -> Gemma Scope 2 CLT.  The two
CLT layouts are not one dictionary: ``load_clt(path)`` reads them into an ExternalCLT.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

from jaxcode.errors import ConfigError
from jaxcode.models import sae_io, transcoder_io
from jaxcode.models.sae_io import ExternalSAE, f32, read_json, read_tensors, require
from jaxcode.models.transcoder_io import ExternalCLT

GS2_WEIGHTS, GS2_CFG = "params.safetensors", "config.json"
LLAMA_SCOPE_CFG, LLAMA_SCOPE_WEIGHTS = "hyperparams.json", os.path.join("checkpoints",
                                                                          "final.safetensors")
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
LAYOUTS = {
    "saelens": "SAELens (cfg.json + sae_weights.safetensors)",
    "sparsify": "sparsify (cfg.json + sae.safetensors)",
    "llama_scope": "Llama Scope (hyperparams.json + checkpoints/final.safetensors)",
    "gemma_scope_2": "Gemma Scope 2 (params.safetensors [+ config.json])",
    "gemma_scope_1": "Gemma Scope 1 (params.npz)",
    "circuit_tracer_clt": "circuit-tracer CLT (W_enc_{l}.safetensors, W_dec_{l}.safetensors, "
                          "config.yaml)",
    "circuit_tracer_plts": "circuit-tracer transcoder set (layer_{l}.safetensors, config.yaml)",
    "gemma_scope_2_clt": "Gemma Scope 2 CLT (params_layer_{l}.safetensors [+ config.json])",
}
CLT_LAYOUTS = ("circuit_tracer_clt", "gemma_scope_2_clt")
GS2_CLT_PREFIX = "params_layer_"
# file name -> layout, for per-layer files
_LAYER_FILES = ((re.compile(r"^W_(enc|dec)_\d+\.safetensors$"), "circuit_tracer_clt"),
                (re.compile(r"^params_layer_\d+\.safetensors$"), "gemma_scope_2_clt"),
                (re.compile(r"^layer_\d+\.safetensors$"), "circuit_tracer_plts"))


def _split(path: str, weights_name: str) -> tuple[str, str]:
  """(directory, weights file) from either of them."""
  if os.path.isdir(path):
    return path, os.path.join(path, weights_name)
  return os.path.dirname(path) or ".", path


# ------------------------------------------------------------------ Gemma Scope 2

def _gs2_kind(conf: dict, w: dict, directory: str) -> str:
  if "affine_skip_connection" in w:
    return "skip_transcoder"
  if conf.get("affine_connection"):
    raise ConfigError(f"{directory}: config.json says affine_connection=true but "
                      f"{GS2_WEIGHTS} has no 'affine_skip_connection'")
  typ = conf.get("type")
  folder = os.path.basename(os.path.normpath(directory))
  if typ == "transcoder" or (typ is None and ("transcoder" in folder
                                              or w["w_dec"].shape[-1] != w["w_enc"].shape[0])):
    return "transcoder"
  return "sae"


def load_gemma_scope_2(path: str) -> ExternalSAE:
  """Reads a Gemma Scope 2 folder (params.safetensors [+ config.json]) or its weights file."""
  directory, wpath = _split(path, GS2_WEIGHTS)
  if not os.path.exists(wpath):
    raise ConfigError(f"Gemma Scope 2 {path!r}: missing {GS2_WEIGHTS}")
  cpath = os.path.join(directory, GS2_CFG)
  conf = read_json(cpath) if os.path.exists(cpath) else {}
  if conf.get("architecture", "jump_relu") != "jump_relu":
    raise ConfigError(f"{cpath}: architecture={conf['architecture']!r}: expected 'jump_relu'")
  w = read_tensors(wpath)
  require(w, ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"), wpath,
          "Gemma Scope 2 w_enc, w_dec, b_enc, b_dec, threshold")
  if w["w_dec"].ndim == 3:
    raise ConfigError(f"{wpath}: w_dec has shape {w['w_dec'].shape} with a layer axis: a "
                      "cross-layer transcoder file, not supported as one dictionary (expected "
                      "w_dec [d_sae, d_out]; a Gemma Scope 2 CLT is a folder of "
                      "params_layer_{l}.safetensors: sae_formats.load_clt(folder))")
  kind = _gs2_kind(conf, w, directory)
  hook_in = conf.get("hf_hook_point_in")
  sae = ExternalSAE(
      "jumprelu", f32(w["w_enc"]), f32(w["b_enc"]), f32(w["w_dec"]), f32(w["b_dec"]),
      threshold=f32(w["threshold"]), cfg=conf, kind=kind,
      W_skip=f32(w["affine_skip_connection"]) if kind == "skip_transcoder" else None,
      hook_in=hook_in, hook_out=conf.get("hf_hook_point_out") or (
          hook_in if kind == "sae" else None), layout="gemma_scope_2")
  sae_io.validate(sae, wpath)
  return sae


# ------------------------------------------------------------------ Gemma Scope 2 CLT

def _gs2_clt_layer(path: str, l: int, n: int) -> dict:
  w = read_tensors(path)
  require(w, ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"), path,
          "Gemma Scope 2 CLT w_enc, w_dec [F, L, d], b_enc, b_dec, threshold")
  w_enc, w_dec = w["w_enc"], w["w_dec"]
  if w_dec.ndim != 3 or w_dec.shape[:2] != (w_enc.shape[-1], n):
    raise ConfigError(f"{path}: w_dec has shape {tuple(w_dec.shape)}, expected "
                      f"({w_enc.shape[-1]}, {n}, d_out) = [F, L, d_out] for a CLT of {n} "
                      "layers")
  out = {"W_enc": f32(np.asarray(w_enc).T), "b_enc": f32(w["b_enc"]),
         "W_dec": f32(w_dec[:, l:, :]), "b_dec": f32(w["b_dec"]),
         "threshold": f32(w["threshold"])}
  if "affine_skip_connection" in w:
    out["W_skip"] = f32(w["affine_skip_connection"])
  return out


def load_gemma_scope_2_clt(path: str, hook_in: str = "blocks.{layer}.mlp_in",
                           hook_out: str = "blocks.{layer}.mlp_out") -> ExternalCLT:
  """Reads a Gemma Scope 2 CLT folder (params_layer_{l}.safetensors, every layer)."""
  if not os.path.isdir(path):
    raise ConfigError(f"Gemma Scope 2 CLT {path!r}: expected the folder of "
                      "params_layer_{l}.safetensors, not one file (a CLT spans every layer)")
  files = transcoder_io.consecutive_files(path, GS2_CLT_PREFIX)
  layers = [_gs2_clt_layer(p, l, len(files)) for l, p in enumerate(files)]
  skips = sum("W_skip" in d for d in layers)
  if skips not in (0, len(layers)):
    raise ConfigError(f"{path}: affine_skip_connection in {skips} of {len(layers)} layers: "
                      "expected all or none")
  cpath = os.path.join(path, GS2_CFG)
  conf = read_json(cpath) if os.path.exists(cpath) else {}
  stack = lambda key: np.stack([d[key] for d in layers])            # noqa: E731
  for key in ("W_enc", "b_enc", "b_dec", "threshold"):
    if len({d[key].shape for d in layers}) != 1:
      raise ConfigError(f"{path}: {key} differs in shape across layers: expected one shape")
  clt = ExternalCLT(
      stack("W_enc"), stack("b_enc"), [d["W_dec"] for d in layers], stack("b_dec"),
      activation="jumprelu", threshold=stack("threshold"),
      W_skip=stack("W_skip") if skips else None, hook_in=hook_in, hook_out=hook_out,
      model_name=conf.get("model_name"), cfg=conf, layout="gemma_scope_2_clt")
  transcoder_io.validate_clt(clt, path)
  return clt


# ------------------------------------------------------------------ Llama Scope

def _avg_norm(hp: dict, side: str, where: str) -> float:
  norms = hp.get("dataset_average_activation_norm") or {}
  hook = hp.get(f"hook_point_{side}")
  v = norms.get(side, norms.get(hook)) if isinstance(norms, dict) else None
  try:
    v = float(v)
  except (TypeError, ValueError):
    v = float("nan")
  if not (math.isfinite(v) and v > 0):
    raise ConfigError(f"{where}: dataset_average_activation_norm.{side}="
                      f"{norms.get(side) if isinstance(norms, dict) else norms!r}: expected a "
                      "finite number > 0 (norm_activation 'dataset-wise')")
  return v


def _llama_scales(hp: dict, where: str) -> tuple[float, float]:
  mode = hp.get("norm_activation", "dataset-wise")
  if mode == "inference":
    return 1.0, 1.0
  if mode != "dataset-wise":
    raise ConfigError(f"{where}: norm_activation={mode!r}: expected 'dataset-wise' or "
                      "'inference' (per-token or per-batch normalisation is not a fixed scale)")
  root = math.sqrt(float(hp["d_model"]))
  return root / _avg_norm(hp, "in", where), root / _avg_norm(hp, "out", where)


def _llama_threshold(hp: dict, w_dec_MO: np.ndarray, where: str):
  act = hp.get("act_fn", "jumprelu")
  if act == "relu":
    return "standard", None
  if act != "jumprelu":
    raise ConfigError(f"{where}: act_fn={act!r}: expected 'jumprelu' or 'relu' (the "
                      "inference activations of Llama Scope)")
  theta = hp.get("jump_relu_threshold")
  if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not (
      math.isfinite(theta) and theta >= 0):
    raise ConfigError(f"{where}: jump_relu_threshold={theta!r}: expected a finite number >= 0")
  if not hp.get("sparsity_include_decoder_norm", True):
    return "jumprelu", np.full(w_dec_MO.shape[0], theta, np.float32)
  norms = np.linalg.norm(w_dec_MO.astype(np.float64), axis=1)
  with np.errstate(divide="ignore"):
    thr = np.where(norms > 0, float(theta) / np.where(norms > 0, norms, 1.0), np.inf)
  return "jumprelu", f32(thr)


def load_llama_scope(path: str) -> ExternalSAE:
  """Reads a Llama Scope folder (hyperparams.json + checkpoints/final.safetensors)."""
  directory = path if os.path.isdir(path) else os.path.dirname(os.path.dirname(path))
  cpath, wpath = (os.path.join(directory, LLAMA_SCOPE_CFG),
                  os.path.join(directory, LLAMA_SCOPE_WEIGHTS))
  for p in (cpath, wpath):
    if not os.path.exists(p):
      raise ConfigError(f"Llama Scope folder {directory!r}: missing "
                        f"{os.path.relpath(p, directory)}")
  hp, w = read_json(cpath), read_tensors(wpath)
  if "d_model" not in hp:
    raise ConfigError(f"{cpath}: missing 'd_model' (expected Llama Scope hyperparams)")
  require(w, ("encoder.weight", "encoder.bias", "decoder.weight"), wpath,
          "Llama Scope encoder.weight [d_sae, d_model], encoder.bias, decoder.weight")
  w_dec = f32(np.asarray(w["decoder.weight"]).T)
  b_dec = f32(w["decoder.bias"]) if "decoder.bias" in w else np.zeros(w_dec.shape[-1:],
                                                                       np.float32)
  act, thr = _llama_threshold(hp, w_dec, cpath)
  a_in, a_out = _llama_scales(hp, cpath)
  hook_in, hook_out = hp.get("hook_point_in"), hp.get("hook_point_out", hp.get("hook_point_in"))
  sae = ExternalSAE(
      act, f32(np.asarray(w["encoder.weight"]).T), f32(w["encoder.bias"]), w_dec, b_dec,
      threshold=thr, apply_b_dec_to_input=bool(hp.get("apply_decoder_bias_to_pre_encoder",
                                                      False)),
      cfg=hp, kind="sae" if hook_in == hook_out else "transcoder", input_scale=a_in,
      output_scale=a_out, hook_in=hook_in, hook_out=hook_out, layout="llama_scope")
  sae_io.validate(sae, wpath)
  return sae


# ------------------------------------------------------------------ sparsify

def _sparsify_checks(cfg: dict, where: str) -> str:
  act = cfg.get("activation", "topk")
  if act not in ("topk", "groupmax"):
    raise ConfigError(f"{where}: activation={act!r}: expected 'topk' or 'groupmax'")
  for key in ("embed_skip", "gram_lookup", "signed"):
    if cfg.get(key):
      raise ConfigError(f"{where}: {key}=true is not supported (it needs inputs other than "
                        "the hookpoint's activations)")
  if "d_in" not in cfg or "k" not in cfg:
    raise ConfigError(f"{where}: missing 'd_in' or 'k' (expected a sparsify cfg.json)")
  return act


def load_sparsify(path: str) -> ExternalSAE:
  """Reads a sparsify hookpoint folder (cfg.json + sae.safetensors)."""
  directory, wpath = _split(path, SPARSIFY_WEIGHTS)
  cpath = os.path.join(directory, SPARSIFY_CFG)
  for p in (cpath, wpath):
    if not os.path.exists(p):
      raise ConfigError(f"sparsify folder {directory!r}: missing {os.path.basename(p)}")
  cfg, w = read_json(cpath), read_tensors(wpath)
  act = _sparsify_checks(cfg, cpath)
  require(w, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), wpath,
          "sparsify encoder.weight [n, d_in], encoder.bias, W_dec [n, d_in], b_dec")
  if cfg.get("skip_connection"):
    require(w, ("W_skip",), wpath, "W_skip [d_in, d_in] (skip_connection=true)")
  transcode = bool(cfg.get("transcode", False))
  skip = None if "W_skip" not in w else f32(np.asarray(w["W_skip"]).T)
  kind = ("skip_transcoder" if skip is not None else "transcoder") if transcode else "sae"
  hook = os.path.basename(os.path.normpath(directory))
  sae = ExternalSAE(
      "topk" if act == "topk" else "groupmax", f32(np.asarray(w["encoder.weight"]).T),
      f32(w["encoder.bias"]), f32(w["W_dec"]), f32(w["b_dec"]), k=int(cfg["k"]),
      apply_b_dec_to_input=not transcode, cfg=cfg, kind=kind, W_skip=skip, hook_in=hook,
      hook_out=hook, layout="sparsify")
  n = cfg.get("num_latents") or 0
  if n and int(n) != sae.d_sae:
    raise ConfigError(f"{cpath}: num_latents={n} but encoder.weight has {sae.d_sae} rows")
  sae_io.validate(sae, wpath)
  return sae


# ------------------------------------------------------------------ detection

def _gs1(path: str) -> ExternalSAE:
  return sae_io.load_gemma_scope_npz(path)


def _saelens(path: str, **kw) -> ExternalSAE:
  return sae_io.load_saelens(path if os.path.isdir(path) else os.path.dirname(path) or ".", **kw)


def _plts(path: str, layer: int | None = None) -> ExternalSAE:
  if os.path.isfile(path):
    return transcoder_io.load_circuit_tracer_plt(path, layer)
  if layer is None:
    have = sorted(transcoder_io.indexed_files(path, "layer_"))
    raise ConfigError(f"{path}: a circuit-tracer transcoder set of layers {have}: pass layer= "
                      "(or read them all with transcoder_io.load_circuit_tracer_plts)")
  fpath = os.path.join(path, f"layer_{layer}.safetensors")
  if not os.path.exists(fpath):
    raise ConfigError(f"{path}: no layer_{layer}.safetensors (have layers "
                      f"{sorted(transcoder_io.indexed_files(path, 'layer_'))})")
  return transcoder_io.load_circuit_tracer_plt(fpath, layer)


READERS = {"saelens": _saelens, "sparsify": load_sparsify, "llama_scope": load_llama_scope,
           "gemma_scope_2": load_gemma_scope_2, "gemma_scope_1": _gs1,
           "circuit_tracer_plts": _plts}
CLT_READERS = {"circuit_tracer_clt": transcoder_io.load_circuit_tracer_clt,
               "gemma_scope_2_clt": load_gemma_scope_2_clt}
OPTIONS = {"norm_scaling_factor": ("saelens", "SAELens files"),
           "layer": ("circuit_tracer_plts", "circuit-tracer transcoder sets")}


def _detect_file(path: str) -> str | None:
  name, parent = os.path.basename(path), os.path.dirname(os.path.abspath(path))
  by_name = {sae_io.WEIGHTS: "saelens", SPARSIFY_WEIGHTS: "sparsify",
             GS2_WEIGHTS: "gemma_scope_2"}
  if name in by_name:
    return by_name[name]
  if name.endswith(".npz"):
    return "gemma_scope_1"
  if name == "final.safetensors" and os.path.exists(
      os.path.join(os.path.dirname(parent), LLAMA_SCOPE_CFG)):
    return "llama_scope"
  for pattern, layout in _LAYER_FILES:
    if pattern.match(name):
      return layout
  return None


def _detect_dir(path: str) -> str | None:
  has = lambda *names: all(os.path.exists(os.path.join(path, n)) for n in names)  # noqa: E731
  for layout, names in (("saelens", (sae_io.CFG, sae_io.WEIGHTS)),
                        ("sparsify", (SPARSIFY_CFG, SPARSIFY_WEIGHTS)),
                        ("llama_scope", (LLAMA_SCOPE_CFG, LLAMA_SCOPE_WEIGHTS)),
                        ("gemma_scope_2", (GS2_WEIGHTS,)), ("gemma_scope_1", ("params.npz",)),
                        ("circuit_tracer_clt", ("W_enc_0.safetensors",))):
    if has(*names):
      return layout
  if transcoder_io.indexed_files(path, GS2_CLT_PREFIX):
    return "gemma_scope_2_clt"
  if transcoder_io.indexed_files(path, "layer_"):
    return "circuit_tracer_plts"
  return None


def detect_layout(path: str) -> str:
  """The layout name of a dictionary directory or weights file (ConfigError when unknown)."""
  if not os.path.exists(path):
    raise ConfigError(f"dictionary path {path!r} does not exist")
  if os.path.isfile(path):
    layout, found = _detect_file(path), [os.path.basename(path)]
  else:
    layout, found = _detect_dir(path), sorted(os.listdir(path))
  if layout is not None:
    return layout
  shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "nothing"
  raise ConfigError(f"{path}: no known dictionary layout (found {shown}); known: "
                    f"{'; '.join(LAYOUTS.values())}")


def load_clt(path: str, layout: str | None = None) -> ExternalCLT:
  """A cross-layer transcoder folder (circuit-tracer or Gemma Scope 2) as an ExternalCLT."""
  if layout is None:
    layout = detect_layout(path)
  if layout not in CLT_READERS:
    raise ConfigError(f"{path}: layout {layout!r} holds no cross-layer transcoder: expected "
                      f"one of {tuple(CLT_READERS)}")
  if os.path.isfile(path):
    raise ConfigError(f"{path}: one file of a cross-layer transcoder ({layout}): pass its "
                      f"folder {os.path.dirname(os.path.abspath(path))!r}")
  return CLT_READERS[layout](path)


def load_dictionary(path: str, layout: str | None = None, **kwargs) -> ExternalSAE:
  """Any published dictionary as an ExternalSAE; the layout is detected unless given.

  kwargs go to the reader (``norm_scaling_factor`` for SAELens files that need it, ``layer``
  for a circuit-tracer transcoder-set folder).  A CLT layout is refused: use ``load_clt``."""
  if layout is None:
    layout = detect_layout(path)
  elif layout not in LAYOUTS:
    raise ConfigError(f"layout={layout!r}: expected one of {tuple(LAYOUTS)}")
  if layout in CLT_LAYOUTS:
    raise ConfigError(f"{path}: a cross-layer transcoder ({layout}), not one dictionary: read "
                      "it with sae_formats.load_clt(path)")
  unknown = sorted(k for k in kwargs if k not in OPTIONS)
  if unknown:
    raise ConfigError(f"{path}: unknown options {unknown}: expected some of {sorted(OPTIONS)}")
  bad = sorted(k for k in kwargs if OPTIONS[k][0] != layout)
  if bad:
    where = sorted({OPTIONS[k][1] for k in bad})
    raise ConfigError(f"{path}: options {bad} apply to {' and '.join(where)} only, not to "
                      f"the {layout} layout")
  return READERS[layout](path, **kwargs)
