"""Cross-layer transcoders (CLTs) and transcoder sets: the in-memory type, circuit-tracer layouts.

``ExternalCLT`` is a cross-layer transcoder in raw activation units (L layers, F features per
layer, rows = features as circuit-tracer stores them):

    W_enc [L, F, d_in]   b_enc [L, F]   W_dec: L arrays, W_dec[l] [F, L-l, d_out] (slot j writes
    to layer l+j)   b_dec [L, d_out]   threshold [L, F] (jumprelu)   W_skip [L, d_in, d_out]

    pre_l = x_l W_enc[l]^T + b_enc[l]                                  x_l = input at layer l
    a_l   = relu: ReLU(pre_l);  jumprelu: ReLU(pre_l) [pre_l > threshold[l]];
            topk: ReLU of the k largest pre_l of that layer and token, 0 elsewhere
    y_m   = sum_{l <= m} a_l W_dec[l][:, m-l, :] + b_dec[m]  (+ x_m W_skip[m])

``hook_in`` / ``hook_out`` are our hookpoint patterns (``blocks.{layer}.mlp_in``), ``layers``
the consecutive model layers covered (slot 0 of the arrays is model layer ``layers[0]``).
``clt_encode`` / ``clt_decode`` / ``clt_forward`` run it in jax.numpy on x [..., L, d_in]
(jit-friendly: the arrays are constants, shapes static).

circuit-tracer CLT folder (decoderesearch/circuit-tracer ``cross_layer_transcoder.py``;
``../shared/notes/circuits.md`` 6.1 and 6.3), files numbered 0..L-1 by position in the CLT:

* ``W_enc_{l}.safetensors``: ``W_enc_{l}`` [F, d_in], ``b_enc_{l}`` [F], ``b_dec_{l}`` [d_out]
  (the output bias of layer l), ``threshold_{l}`` [F] for JumpReLU, ``W_skip_{l}`` [d_in, d_out]
  when the CLT has a skip: circuit-tracer's CLT applies it as ``x @ W_skip[l]`` with NO
  transpose (unlike its per-layer transcoders), which is our orientation, stored as is.
* ``W_dec_{l}.safetensors``: ``W_dec_{l}`` [F, L-l, d_out].
* ``config.yaml``: model_kind 'cross_layer_transcoder', model_name, feature_input_hook and
  feature_output_hook (TransformerLens names under ``blocks.{l}``), activation relu | jumprelu
  | topk, k (topk), and a ``jaxcode`` block with our hook patterns and model layers, so import
  is lossless.  circuit-tracer itself runs CLTs with ReLU or JumpReLU only.

circuit-tracer transcoder set (``single_layer_transcoder.py``; notes 6.2): one
``layer_{layer}.safetensors`` per model layer with ``W_enc`` [F, d_in] (rows = features, the
transpose of ExternalSAE's), ``W_dec`` [F, d_out], ``b_enc`` [F], ``b_dec`` [d_out], optional
``activation_function.threshold`` [F], ``W_skip`` [d_out, d_in] applied as ``x @ W_skip.T``,
``k`` (int scalar, TopK); ``config.yaml`` with model_kind 'transcoder_set' and the same keys.
circuit-tracer wants layers 0..n-1; we write and read whatever layers are given.

Conventions both ways: circuit-tracer's JumpReLU keeps ``pre`` where ``pre > threshold``
without a ReLU; ours (as SAELens and Gemma Scope) is ReLU(pre)[pre > threshold].  They agree
for thresholds >= 0, so export writes max(threshold, 0) (the same outputs) and import refuses
negative thresholds.  Hook names map ours <-> TransformerLens: resid_pre hook_resid_pre,
resid_mid hook_resid_mid, resid_post hook_resid_post, mlp_in mlp.hook_in, mlp_out
hook_mlp_out, attn_out hook_attn_out, mlp_hidden mlp.hook_post; a TL name with no jaxcode
equivalent (``ln2.hook_normalized``) is kept as ``blocks.{layer}.<TL name>``.  Export writes
a complete folder under a temporary name and renames it into place (an existing earlier
export, recognised by its config.yaml, is replaced; any other non-empty folder is refused).
YAML through PyYAML (safe_load / safe_dump; a dependency of flax, ml_collections and
transformers).  Weights are written float32; bf16 files are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from safetensors.numpy import save_file

from jaxcode.errors import ConfigError
from jaxcode.models import sae_io
from jaxcode.models.sae_io import ExternalSAE, f32, read_tensors, require

CT_CFG = "config.yaml"
CLT_ACTIVATIONS = ("relu", "jumprelu", "topk")
OUR_TO_TL = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid",
             "resid_post": "hook_resid_post", "mlp_in": "mlp.hook_in", "mlp_out": "hook_mlp_out",
             "attn_out": "hook_attn_out", "mlp_hidden": "mlp.hook_post"}
TL_TO_OUR = {v: k for k, v in OUR_TO_TL.items()}
_BLOCK = re.compile(r"^blocks\.(\{layer\}|\d+)\.(.+)$")
# ExternalSAE activation <-> circuit-tracer's activation word
_PLT_ACT = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}


@dataclasses.dataclass
class ExternalCLT:
  W_enc: np.ndarray                       # [L, F, d_in]
  b_enc: np.ndarray                       # [L, F]
  W_dec: list                             # L arrays, W_dec[l] [F, L-l, d_out]
  b_dec: np.ndarray                       # [L, d_out]
  activation: str = "relu"                # relu | jumprelu | topk
  threshold: np.ndarray | None = None     # [L, F], jumprelu: kept iff pre > threshold
  k: int | None = None                    # topk: per layer and token
  W_skip: np.ndarray | None = None        # [L, d_in, d_out]: y_m += x_m W_skip[m]
  hook_in: str | None = "blocks.{layer}.mlp_in"
  hook_out: str | None = "blocks.{layer}.mlp_out"
  layers: tuple | None = None             # model layers covered; None -> 0..L-1
  model_name: str | None = None
  cfg: dict = dataclasses.field(default_factory=dict)
  layout: str = "jaxcode"

  def __post_init__(self):
    if self.layers is None and getattr(self.W_enc, "ndim", 0) == 3:
      self.layers = tuple(range(self.W_enc.shape[0]))
    elif isinstance(self.layers, (list, tuple, range, np.ndarray)):
      self.layers = tuple(int(v) if isinstance(v, np.integer) else v for v in self.layers)

  @property
  def n_layers(self) -> int:
    return self.W_enc.shape[0]

  @property
  def d_sae(self) -> int:
    return self.W_enc.shape[1]

  @property
  def d_in(self) -> int:
    return self.W_enc.shape[2]

  @property
  def d_out(self) -> int:
    return self.b_dec.shape[-1]


# ------------------------------------------------------------------ checks

def _shape_error(where, name, got, want, what=""):
  return ConfigError(f"{where}: {name} has shape {tuple(got)}, expected {tuple(want)}{what}")


def check_layers(layers, n: int, where: str):
  """Raises unless ``layers`` are n consecutive increasing non-negative integers."""
  ints = isinstance(layers, tuple) and all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in layers)
  ok = ints and len(layers) == n and (n == 0 or (layers[0] >= 0 and all(
      b == a + 1 for a, b in zip(layers, layers[1:]))))
  if not ok:
    start = max(int(layers[0]), 0) if ints and layers else 0
    raise ConfigError(f"{where}: layers={layers!r}: a cross-layer transcoder covers "
                      f"consecutive layers (expected {n} consecutive increasing integers >= 0, "
                      f"e.g. {tuple(range(start, start + n))})")


def _check_decoders(clt: ExternalCLT, where: str):
  L, F = clt.W_enc.shape[:2]
  if not isinstance(clt.W_dec, (list, tuple)) or len(clt.W_dec) != L:
    got = len(clt.W_dec) if isinstance(clt.W_dec, (list, tuple)) else type(clt.W_dec).__name__
    raise ConfigError(f"{where}: W_dec is {got!r}: expected a list of L={L} arrays "
                      "W_dec[l] [F, L-l, d_out]")
  d_out = clt.b_dec.shape[-1] if getattr(clt.b_dec, "ndim", 0) == 2 else None
  for l, w in enumerate(clt.W_dec):
    want = (F, L - l, d_out if d_out is not None else np.shape(w)[-1])
    if np.ndim(w) != 3 or np.shape(w) != want:
      raise _shape_error(where, f"W_dec[{l}]", np.shape(w), want, " = [F, L-l, d_out]")


def _check_activation(clt: ExternalCLT, where: str):
  if clt.activation not in CLT_ACTIVATIONS:
    raise ConfigError(f"{where}: activation={clt.activation!r}: expected one of "
                      f"{CLT_ACTIVATIONS}")
  if (clt.activation == "jumprelu") != (clt.threshold is not None):
    raise ConfigError(f"{where}: activation={clt.activation!r} with threshold "
                      f"{'set' if clt.threshold is not None else 'None'}: a threshold [L, F] "
                      "goes with 'jumprelu' and only with it")
  if clt.activation == "topk":
    k = clt.k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= clt.d_sae:
      raise ConfigError(f"{where}: k={k!r}: expected an integer in [1, F={clt.d_sae}] (topk)")
  for name in ("hook_in", "hook_out"):
    v = getattr(clt, name)
    if v is not None and (not isinstance(v, str) or "{layer}" not in v):
      raise ConfigError(f"{where}: {name}={v!r}: expected a hookpoint pattern with "
                        "'{layer}', e.g. 'blocks.{layer}.mlp_in'")


def validate_clt(clt: ExternalCLT, where: str):
  """Shapes, activation, k, hook patterns and layers consistent (one-line ConfigError)."""
  if not isinstance(clt.W_enc, np.ndarray) or clt.W_enc.ndim != 3:
    raise ConfigError(f"{where}: W_enc has shape {np.shape(clt.W_enc)}, expected 3-D "
                      "[L, F, d_in]")
  L, F, d = clt.W_enc.shape
  if np.ndim(clt.b_dec) != 2 or np.shape(clt.b_dec)[0] != L:
    raise _shape_error(where, "b_dec", np.shape(clt.b_dec), (L, "d_out"), " = [L, d_out]")
  want = {"b_enc": (L, F)}
  if clt.threshold is not None:
    want["threshold"] = (L, F)
  if clt.W_skip is not None:
    want["W_skip"] = (L, d, clt.d_out)
  for name, shape in want.items():
    if np.shape(getattr(clt, name)) != shape:
      raise _shape_error(where, name, np.shape(getattr(clt, name)), shape)
  _check_decoders(clt, where)
  _check_activation(clt, where)
  check_layers(clt.layers, L, where)


# ------------------------------------------------------------------ apply

def _clt_input(clt: ExternalCLT, x, name: str):
  x = jnp.asarray(x, jnp.float32)
  if x.ndim < 2 or x.shape[-2:] != (clt.n_layers, clt.d_in):
    raise ConfigError(f"{name} has shape {tuple(x.shape)}: expected [..., L={clt.n_layers}, "
                      f"d_in={clt.d_in}] (the input at every layer of the CLT)")
  return x


def _topk_last(pre, k: int):
  flat = pre.reshape(-1, pre.shape[-1])
  v, i = jax.lax.top_k(flat, k)
  rows = jnp.arange(flat.shape[0])[:, None]
  out = jnp.zeros_like(flat).at[rows, i].set(jnp.maximum(v, 0))
  return out.reshape(pre.shape)


def clt_encode(clt: ExternalCLT, x_NLD, apply_activation: bool = True):
  """Feature activations a [..., L, F] of inputs x [..., L, d_in] (pre-activations when
  apply_activation is false)."""
  x = _clt_input(clt, x_NLD, "clt_encode: x")
  pre = jnp.einsum("...ld,lfd->...lf", x, clt.W_enc) + clt.b_enc
  if not apply_activation:
    return pre
  if clt.activation == "relu":
    return jnp.maximum(pre, 0)
  if clt.activation == "jumprelu":
    return jnp.maximum(pre, 0) * (pre > jnp.asarray(clt.threshold))
  return _topk_last(pre, int(clt.k))


def clt_decode(clt: ExternalCLT, a_NLF, x_NLD=None):
  """Outputs y [..., L, d_out]: y_m = sum_{l<=m} a_l W_dec[l][:, m-l] + b_dec[m] (+ skip)."""
  a = jnp.asarray(a_NLF, jnp.float32)
  if a.ndim < 2 or a.shape[-2:] != (clt.n_layers, clt.d_sae):
    raise ConfigError(f"clt_decode: a has shape {tuple(a.shape)}: expected [..., L="
                      f"{clt.n_layers}, F={clt.d_sae}]")
  y = jnp.zeros(a.shape[:-1] + (clt.d_out,), jnp.float32)
  for l in range(clt.n_layers):
    y = y.at[..., l:, :].add(jnp.einsum("...f,fjd->...jd", a[..., l, :], clt.W_dec[l]))
  y = y + clt.b_dec
  if clt.W_skip is not None:
    if x_NLD is None:
      raise ConfigError("this CLT has a skip connection W_skip: clt_decode needs the input x "
                        "as well (clt_decode(clt, a, x))")
    y = y + jnp.einsum("...ld,lde->...le", _clt_input(clt, x_NLD, "clt_decode: x"), clt.W_skip)
  return y


def clt_forward(clt: ExternalCLT, x_NLD):
  """clt_decode(clt_encode(x), x): every layer's predicted output, [..., L, d_out]."""
  return clt_decode(clt, clt_encode(clt, x_NLD), x_NLD)


# ------------------------------------------------------------------ hook names

def _site(name: str) -> str:
  m = _BLOCK.match(name)
  return m.group(2) if m else name


def tl_hook(name: str, where: str) -> str:
  """TransformerLens name under blocks.{l} of one of our hookpoints (pattern, concrete name,
  or bare site such as 'mlp_in'); a name already in TransformerLens form passes through."""
  if not isinstance(name, str) or not name:
    raise ConfigError(f"{where}: hookpoint {name!r}: expected a name such as "
                      "'blocks.{layer}.mlp_in' (or pass feature_input_hook= / "
                      "feature_output_hook=)")
  site = _site(name)
  if site in OUR_TO_TL:
    return OUR_TO_TL[site]
  if site in TL_TO_OUR or "hook" in site:
    return site
  raise ConfigError(f"{where}: hookpoint {name!r} has no TransformerLens name: expected one "
                    f"of {sorted(OUR_TO_TL)} under blocks.{{layer}} (or a TransformerLens "
                    "name such as 'hook_resid_mid')")


def our_pattern(tl_name: str) -> str:
  """Our hookpoint pattern for a TransformerLens name under blocks.{l}."""
  site = _site(tl_name)
  return "blocks.{layer}." + TL_TO_OUR.get(site, site)


def _pattern_of(hook: str | None, layer: int) -> str | None:
  """'blocks.3.mlp_in' at layer 3 -> 'blocks.{layer}.mlp_in' (patterns pass through)."""
  if hook is None or "{layer}" in hook:
    return hook
  prefix = f"blocks.{layer}."
  return "blocks.{layer}." + hook[len(prefix):] if hook.startswith(prefix) else hook


# ------------------------------------------------------------------ files

def _plain(v):
  """v as YAML-safe plain data (numpy scalars and tuples made plain; other objects as str)."""
  return json.loads(json.dumps(v, default=lambda o: o.item() if isinstance(o, np.generic)
                               else str(o)))


def read_ct_config(directory: str, required: bool = False) -> dict:
  """config.yaml of a circuit-tracer folder ({} when absent and not required)."""
  path = os.path.join(directory, CT_CFG)
  if not os.path.exists(path):
    if required:
      raise ConfigError(f"circuit-tracer folder {directory!r}: missing {CT_CFG}")
    return {}
  try:
    with open(path) as f:
      conf = yaml.safe_load(f)
  except (OSError, yaml.YAMLError) as e:
    raise ConfigError(f"{path}: cannot read YAML ({type(e).__name__}): expected a mapping "
                      "of circuit-tracer keys") from None
  if conf is None:
    return {}
  if not isinstance(conf, dict):
    raise ConfigError(f"{path}: holds a {type(conf).__name__}, expected a YAML mapping")
  return conf


def indexed_files(directory: str, prefix: str, suffix: str = ".safetensors") -> dict:
  """{index: path} of the files named prefix{index}suffix in a folder."""
  pat = re.compile("^" + re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
  out = {}
  for name in os.listdir(directory):
    m = pat.match(name)
    if m:
      out[int(m.group(1))] = os.path.join(directory, name)
  return dict(sorted(out.items()))


def consecutive_files(directory: str, prefix: str, suffix: str = ".safetensors") -> list:
  """The paths prefix0..prefix{n-1}: ConfigError when none or when one is missing."""
  found = indexed_files(directory, prefix, suffix)
  if not found:
    raise ConfigError(f"{directory}: no {prefix}{{l}}{suffix} files: expected one per layer "
                      "of a cross-layer transcoder")
  missing = [i for i in range(max(found) + 1) if i not in found]
  if missing:
    raise ConfigError(f"{directory}: missing {prefix}{missing[0]}{suffix} (have layers "
                      f"{sorted(found)}): a cross-layer transcoder covers consecutive layers "
                      f"0..{max(found)}")
  return list(found.values())


def _replace_dir(directory: str, write) -> str:
  """Calls write(tmp) on a fresh temporary folder beside ``directory``, then renames it there."""
  directory = os.path.abspath(directory)
  if os.path.lexists(directory):
    entries = os.listdir(directory) if os.path.isdir(directory) else None
    if entries is None or (entries and CT_CFG not in entries):
      raise ConfigError(f"{directory}: exists and is not an earlier export (no {CT_CFG}): "
                        "expected a missing or empty folder")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
  try:
    os.chmod(tmp, 0o755)
    write(tmp)
    if os.path.lexists(directory):
      old = f"{directory}.old-{uuid.uuid4().hex[:8]}"
      os.rename(directory, old)
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _write_yaml(path: str, conf: dict):
  with open(path, "w") as f:
    yaml.safe_dump(_plain(conf), f, sort_keys=False, default_flow_style=False)


def _ct_conf(kind: str, model_name, hooks: tuple[str, str], activation: str, k,
             jaxcode: dict) -> dict:
  conf = {"model_kind": kind}
  if model_name is not None:
    conf["model_name"] = model_name
  conf.update(feature_input_hook=hooks[0], feature_output_hook=hooks[1], activation=activation)
  if k is not None:
    conf["k"] = int(k)
  conf["jaxcode"] = {"format_version": 1, **jaxcode}
  return conf


def _export_hooks(hook_in, hook_out, feature_input_hook, feature_output_hook, where):
  return (tl_hook(feature_input_hook or hook_in, where + " (input hook)"),
          tl_hook(feature_output_hook or hook_out, where + " (output hook)"))


def _check_threshold_sign(thr, where: str):
  if thr is not None and np.any(np.asarray(thr, np.float32) < 0):
    raise ConfigError(f"{where}: negative JumpReLU thresholds: circuit-tracer keeps pre > "
                      "threshold without a ReLU, which ours (ReLU(pre)[pre > threshold]) "
                      "matches only for thresholds >= 0")


# ------------------------------------------------------------------ circuit-tracer CLT

def _clt_layer_arrays(clt: ExternalCLT, l: int) -> tuple[dict, dict]:
  enc = {f"W_enc_{l}": f32(clt.W_enc[l]), f"b_enc_{l}": f32(clt.b_enc[l]),
         f"b_dec_{l}": f32(clt.b_dec[l])}
  if clt.threshold is not None:
    enc[f"threshold_{l}"] = f32(np.maximum(clt.threshold[l], 0))
  if clt.W_skip is not None:
    enc[f"W_skip_{l}"] = f32(clt.W_skip[l])          # [d_in, d_out], applied as x @ W_skip_l
  return enc, {f"W_dec_{l}": f32(clt.W_dec[l])}


def export_circuit_tracer_clt(directory: str, clt: ExternalCLT,
                              feature_input_hook: str | None = None,
                              feature_output_hook: str | None = None) -> str:
  """Writes a CLT as circuit-tracer's folder (module docstring), atomically; returns the path.

  The TransformerLens hook names come from clt.hook_in / hook_out unless given.  W_skip is
  stored per layer as ``W_skip_{l}`` [d_in, d_out] in W_enc_{l}.safetensors, in the
  orientation circuit-tracer's CLT applies with no transpose (x @ W_skip_l)."""
  where = f"export_circuit_tracer_clt({directory!r})"
  validate_clt(clt, where)
  hooks = _export_hooks(clt.hook_in, clt.hook_out, feature_input_hook, feature_output_hook,
                        where)
  conf = _ct_conf("cross_layer_transcoder", clt.model_name, hooks, clt.activation,
                  clt.k if clt.activation == "topk" else None,
                  {"hook_in": clt.hook_in, "hook_out": clt.hook_out,
                   "layers": list(clt.layers),
                   "cfg": {k: v for k, v in clt.cfg.items() if k != "jaxcode"}})

  def write(tmp):
    for l in range(clt.n_layers):
      enc, dec = _clt_layer_arrays(clt, l)
      save_file(enc, os.path.join(tmp, f"W_enc_{l}.safetensors"))
      save_file(dec, os.path.join(tmp, f"W_dec_{l}.safetensors"))
    _write_yaml(os.path.join(tmp, CT_CFG), conf)
  return _replace_dir(directory, write)


def _ct_activation(conf: dict, has_threshold: bool, where: str) -> tuple[str, int | None]:
  act = conf.get("activation")
  act = {"jump_relu": "jumprelu", None: "jumprelu" if has_threshold else "relu"}.get(act, act)
  if act not in CLT_ACTIVATIONS:
    raise ConfigError(f"{where}: activation={conf.get('activation')!r}: expected one of "
                      f"{CLT_ACTIVATIONS}")
  if (act == "jumprelu") != has_threshold:
    raise ConfigError(f"{where}: activation={act!r} but the weights "
                      f"{'have' if has_threshold else 'have no'} threshold tensors")
  k = conf.get("k") if act == "topk" else None
  if act == "topk" and (isinstance(k, bool) or not isinstance(k, int)):
    raise ConfigError(f"{where}: activation 'topk' with k={k!r}: expected an integer k")
  return act, k


def _read_clt_layer(directory: str, l: int) -> tuple[dict, dict]:
  epath = os.path.join(directory, f"W_enc_{l}.safetensors")
  dpath = os.path.join(directory, f"W_dec_{l}.safetensors")
  if not os.path.exists(dpath):
    raise ConfigError(f"circuit-tracer CLT {directory!r}: missing W_dec_{l}.safetensors")
  enc, dec = read_tensors(epath), read_tensors(dpath)
  require(enc, (f"W_enc_{l}", f"b_dec_{l}"), epath, f"W_enc_{l} [F, d_in] and b_dec_{l} [d]")
  require(dec, (f"W_dec_{l}",), dpath, f"W_dec_{l} [F, L-{l}, d_out]")
  return enc, dec


def _ct_config_for_clt(directory: str) -> dict:
  conf = read_ct_config(directory)
  jpath = os.path.join(directory, "config.json")
  if not conf and os.path.exists(jpath):                   # ByteDance-style release
    conf = sae_io.read_json(jpath)
    if conf.get("k") is not None:
      raise ConfigError(f"{jpath}: k={conf['k']!r}: a TopK taken jointly over layers on "
                        "a*||W_dec|| (ByteDance's CLT) is not one of our CLT activations "
                        f"{CLT_ACTIVATIONS} (topk is per layer)")
  return conf


def _stack_clt_layers(directory: str, n: int) -> dict:
  parts = {"W_enc": [], "b_enc": [], "b_dec": [], "threshold": [], "W_skip": [], "W_dec": []}
  for l in range(n):
    enc, dec = _read_clt_layer(directory, l)
    w_enc = f32(enc[f"W_enc_{l}"])
    parts["W_enc"].append(w_enc)
    parts["b_enc"].append(f32(enc[f"b_enc_{l}"]) if f"b_enc_{l}" in enc
                          else np.zeros(w_enc.shape[:1], np.float32))
    parts["b_dec"].append(f32(enc[f"b_dec_{l}"]))
    for key in ("threshold", "W_skip"):
      if f"{key}_{l}" in enc:
        parts[key].append(f32(enc[f"{key}_{l}"]))
    parts["W_dec"].append(f32(dec[f"W_dec_{l}"]))
  for key in ("threshold", "W_skip"):
    if parts[key] and len(parts[key]) != n:
      raise ConfigError(f"{directory}: {key}_{{l}} present in {len(parts[key])} of {n} "
                        f"W_enc files: expected all layers or none")
  return parts


def _np_stack(arrays: list, name: str, where: str) -> np.ndarray:
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise ConfigError(f"{where}: {name} differs in shape across layers ({sorted(shapes)}): "
                      "expected one shape per layer")
  return np.stack(arrays)


def load_circuit_tracer_clt(directory: str) -> ExternalCLT:
  """Reads circuit-tracer's CLT folder (module docstring) into an ExternalCLT.

  Missing b_enc_{l} read as zeros and extra tensors (ByteDance's W_dec_norm_{l}) ignored."""
  if not os.path.isdir(directory):
    raise ConfigError(f"circuit-tracer CLT {directory!r}: expected a folder of "
                      "W_enc_{l}/W_dec_{l}.safetensors")
  conf = _ct_config_for_clt(directory)
  n = len(consecutive_files(directory, "W_enc_"))
  p = _stack_clt_layers(directory, n)
  act, k = _ct_activation(conf, bool(p["threshold"]), os.path.join(directory, CT_CFG))
  thr = _np_stack(p["threshold"], "threshold", directory) if p["threshold"] else None
  _check_threshold_sign(thr, directory)
  jx = conf.get("jaxcode") or {}
  fin = conf.get("feature_input_hook", "hook_resid_mid")    # circuit-tracer's defaults
  fout = conf.get("feature_output_hook", "hook_mlp_out")
  clt = ExternalCLT(
      _np_stack(p["W_enc"], "W_enc", directory), _np_stack(p["b_enc"], "b_enc", directory),
      p["W_dec"], _np_stack(p["b_dec"], "b_dec", directory), activation=act, threshold=thr,
      k=k, W_skip=_np_stack(p["W_skip"], "W_skip", directory) if p["W_skip"] else None,
      hook_in=jx.get("hook_in", our_pattern(fin)), hook_out=jx.get("hook_out",
                                                                    our_pattern(fout)),
      layers=tuple(jx.get("layers", range(n))), model_name=conf.get("model_name"),
      cfg=conf, layout="circuit_tracer_clt")
  validate_clt(clt, directory)
  return clt


# ------------------------------------------------------------------ circuit-tracer PLT set

def _plt_arrays(sae: ExternalSAE) -> dict:
  raw = sae_io.external_raw_arrays(sae)
  out = {"W_enc": np.ascontiguousarray(raw["W_enc"].T), "W_dec": raw["W_dec"],
         "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
  if "threshold" in raw:
    out["activation_function.threshold"] = f32(np.maximum(raw["threshold"], 0))
  if "W_skip" in raw:
    out["W_skip"] = np.ascontiguousarray(raw["W_skip"].T)  # [d_out, d_in], x @ W_skip.T
  if sae.architecture == "topk":
    out["k"] = np.asarray(int(sae.k), np.int64)
  return out


def _plt_set_facts(transcoders, layers, where) -> tuple[str, tuple, tuple]:
  """(activation word, hook_in patterns, hook_out patterns) of a transcoder set."""
  n = len(transcoders) if isinstance(transcoders, (list, tuple)) else None
  if not n or n != len(layers):
    raise ConfigError(f"{where}: {n if n is not None else type(transcoders).__name__} "
                      f"transcoders for layers {tuple(layers)}: expected one per layer")
  if len(set(layers)) != len(layers) or any(
      isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in layers):
    raise ConfigError(f"{where}: layers={tuple(layers)}: expected distinct integers >= 0")
  acts = set()
  for sae, layer in zip(transcoders, layers):
    sae_io.validate(sae, f"{where} layer {layer}")
    if sae.kind == "sae" or sae.architecture not in _PLT_ACT:
      raise ConfigError(f"{where}: layer {layer} is a {sae.architecture} {sae.kind}: expected "
                        "a transcoder or skip transcoder with activation standard, jumprelu "
                        "or topk")
    acts.add(_PLT_ACT[sae.architecture])
  if len(acts) != 1:
    raise ConfigError(f"{where}: activations {sorted(acts)} differ across layers: a "
                      "circuit-tracer transcoder set has one activation")
  pin = {_pattern_of(s.hook_in, l) for s, l in zip(transcoders, layers)}
  pout = {_pattern_of(s.hook_out, l) for s, l in zip(transcoders, layers)}
  return acts.pop(), tuple(pin), tuple(pout)


def _one_pattern(patterns: tuple, given, what: str, where: str) -> str | None:
  """The transcoders' common hook pattern; None when they have none but ``given`` names it."""
  if len(patterns) == 1 and patterns[0] is not None and "{layer}" in patterns[0]:
    return patterns[0]
  if given is None:
    raise ConfigError(f"{where}: the transcoders' {what} hooks {sorted(map(str, patterns))} do "
                      f"not give one pattern 'blocks.{{layer}}.<site>': pass feature_{what}_hook=")
  return None


def export_circuit_tracer_plts(directory: str, transcoders: list, layers,
                               feature_input_hook: str | None = None,
                               feature_output_hook: str | None = None,
                               model_name: str | None = None) -> str:
  """Writes per-layer transcoders as circuit-tracer's transcoder set (module docstring).

  ``transcoders[i]`` (an ExternalSAE, kind transcoder or skip_transcoder) goes to
  layer_{layers[i]}.safetensors; scales and any b_dec subtraction are folded into raw units.
  The hooks default to the transcoders' hook_in / hook_out (ours, mapped to TransformerLens)."""
  where = f"export_circuit_tracer_plts({directory!r})"
  layers = tuple(int(v) if isinstance(v, np.integer) else v for v in layers)
  act, pin, pout = _plt_set_facts(transcoders, layers, where)
  hook_in = _one_pattern(pin, feature_input_hook, "input", where)
  hook_out = _one_pattern(pout, feature_output_hook, "output", where)
  hooks = _export_hooks(hook_in, hook_out, feature_input_hook, feature_output_hook, where)
  ks = {int(s.k) for s in transcoders if s.architecture == "topk"}
  conf = _ct_conf("transcoder_set", model_name, hooks, act, ks.pop() if len(ks) == 1 else None,
                  {"hook_in": hook_in or our_pattern(hooks[0]),
                   "hook_out": hook_out or our_pattern(hooks[1]), "layers": list(layers)})

  def write(tmp):
    for sae, layer in zip(transcoders, layers):
      save_file(_plt_arrays(sae), os.path.join(tmp, f"layer_{layer}.safetensors"))
    _write_yaml(os.path.join(tmp, CT_CFG), conf)
  return _replace_dir(directory, write)


def _plt_activation(w: dict, conf: dict, where: str):
  thr = w.get("activation_function.threshold", w.get("threshold"))
  if thr is not None:
    _check_threshold_sign(thr, where)
    return "jumprelu", f32(thr), None
  k = w.get("k")
  if k is None and conf.get("activation") == "topk":
    k = conf.get("k")
  if k is None:
    if conf.get("activation") not in (None, "relu"):
      raise ConfigError(f"{where}: activation={conf.get('activation')!r} but no "
                        "activation_function.threshold or k tensor: expected relu")
    return "standard", None, None
  k = np.asarray(k).reshape(-1)
  if k.size != 1:
    raise ConfigError(f"{where}: k has {k.size} values, expected one integer")
  return "topk", None, int(k[0])


def load_circuit_tracer_plt(path: str, layer: int | None = None,
                            conf: dict | None = None) -> ExternalSAE:
  """One layer_{layer}.safetensors of a circuit-tracer transcoder set as an ExternalSAE."""
  if not os.path.isfile(path):
    raise ConfigError(f"circuit-tracer transcoder file {path!r} does not exist")
  if layer is None:
    m = re.match(r"^layer_(\d+)\.safetensors$", os.path.basename(path))
    if not m:
      raise ConfigError(f"{path}: expected a file named layer_{{l}}.safetensors (or pass "
                        "layer=)")
    layer = int(m.group(1))
  if conf is None:
    conf = read_ct_config(os.path.dirname(path) or ".")
  w = read_tensors(path)
  require(w, ("W_enc", "W_dec", "b_enc", "b_dec"), path,
          "circuit-tracer W_enc [F, d_in], W_dec [F, d_out], b_enc [F], b_dec [d_out]")
  act, thr, k = _plt_activation(w, conf, path)
  jx = conf.get("jaxcode") or {}
  pin = jx.get("hook_in") or our_pattern(conf.get("feature_input_hook", "hook_resid_mid"))
  pout = jx.get("hook_out") or our_pattern(conf.get("feature_output_hook", "hook_mlp_out"))
  skip = None if "W_skip" not in w else f32(np.asarray(w["W_skip"]).T)
  sae = ExternalSAE(act, f32(np.asarray(w["W_enc"]).T), f32(w["b_enc"]), f32(w["W_dec"]),
                    f32(w["b_dec"]), threshold=thr, k=k, cfg={**conf, "layer": layer},
                    kind="skip_transcoder" if skip is not None else "transcoder", W_skip=skip,
                    hook_in=pin.format(layer=layer), hook_out=pout.format(layer=layer),
                    layout="circuit_tracer_plts")
  sae_io.validate(sae, path)
  return sae


def load_circuit_tracer_plts(directory: str) -> dict:
  """{layer: ExternalSAE} of a circuit-tracer transcoder-set folder (layer_{l}.safetensors)."""
  if not os.path.isdir(directory):
    raise ConfigError(f"circuit-tracer transcoder set {directory!r}: expected a folder of "
                      "layer_{l}.safetensors")
  conf = read_ct_config(directory)
  files = indexed_files(directory, "layer_")
  if not files:
    listed = conf.get("transcoders")
    raise ConfigError(f"{directory}: no layer_{{l}}.safetensors files"
                      + (f" (config.yaml lists {len(listed)} remote transcoders: download "
                         "them first)" if listed else "") + ": expected a transcoder set")
  want = (conf.get("jaxcode") or {}).get("layers")
  if want is not None and sorted(want) != sorted(files):
    raise ConfigError(f"{directory}: config.yaml lists layers {sorted(want)} but the folder "
                      f"has layer files {sorted(files)}")
  return {layer: load_circuit_tracer_plt(path, layer, conf) for layer, path in files.items()}


# ------------------------------------------------------------------ from trained parameters

_SAE_FAMILY_ACTIVATION = {"relu": "standard", "relu_classic": "standard", "topk": "topk",
                          "jumprelu": "jumprelu", "jumprelu_tanh": "jumprelu",
                          "batchtopk": "jumprelu", "matryoshka": "jumprelu"}


def external_transcoder(cfg, params, aux, *, hook_in=None, hook_out=None) -> ExternalSAE:
  """One trained transcoder of the SAE family (jaxcode.models.sae with transcoder=True; ONE
  dictionary, no stack axis) as an ExternalSAE in its own semantics: input_scale and
  output_scale carry the normalisation, W_skip [d_in, d_out] = ours transposed; BatchTopK
  becomes JumpReLU at its EMA threshold (pre-activations are unchanged by the scales)."""
  from jaxcode.models import sae as sae_lib
  p = {k: np.asarray(v, np.float32) for k, v in params.items()}
  act = _SAE_FAMILY_ACTIVATION[cfg.architecture]
  thr = None
  if cfg.architecture.startswith("jumprelu"):
    thr = np.maximum(p["threshold"], 0.0)    # ReLU first: a negative threshold acts as 0
  elif cfg.architecture in sae_lib.BATCH_TOPK_FAMILY:
    thr = np.full((cfg.d_sae,), max(float(aux["threshold"]), 0.0), np.float32)
  return ExternalSAE(
      act, p["W_enc_MD"].T.copy(), p["b_enc"], p["W_dec"], p["b_dec"], threshold=thr,
      k=int(aux["k"]) if act == "topk" else None, kind="skip_transcoder" if cfg.skip
      else "transcoder", W_skip=p["W_skip"].T.copy() if cfg.skip else None,
      input_scale=float(aux["norm_scale"]), output_scale=float(aux["norm_scale_out"]),
      hook_in=hook_in, hook_out=hook_out, layout="jaxcode")


def external_clt(cfg, params, aux, *, layers, hook_in, hook_out, model_name=None) -> ExternalCLT:
  """A trained CLT (jaxcode.models.clt; no stack axis) as an ExternalCLT with the per-layer
  normalisation folded into raw units: W_enc[l] *= s_in[l], W_dec^{l->m} /= s_out[m],
  b_dec[m] /= s_out[m], W_skip[m] -> (s_in[m] / s_out[m]) W_skip[m]^T; topk keeps k; a
  BatchTopK CLT becomes JumpReLU at its per-layer EMA thresholds."""
  p = {k: np.asarray(v, np.float32) for k, v in params.items()}
  s_in = np.asarray(aux["norm_scale"], np.float32)
  s_out = np.asarray(aux["norm_scale_out"], np.float32)
  L = cfg.n_layers
  w_dec = [p[f"W_dec_{l}"] / s_out[l:][None, :, None] for l in range(L)]
  act, thr = {"relu": "relu", "jumprelu": "jumprelu", "topk": "topk",
              "batchtopk": "jumprelu"}[cfg.architecture], None
  if cfg.architecture == "jumprelu":
    thr = np.maximum(p["threshold"], 0.0)
  elif cfg.architecture == "batchtopk":
    thr = np.repeat(np.maximum(np.asarray(aux["threshold"], np.float32), 0.0)[:, None],
                    cfg.d_sae, axis=1)
  skip = None
  if "W_skip" in p:
    skip = np.transpose(p["W_skip"], (0, 2, 1)) * (s_in / s_out)[:, None, None]
  return ExternalCLT(p["W_enc_LMD"] * s_in[:, None, None], p["b_enc"], w_dec,
                     p["b_dec"] / s_out[:, None], activation=act, threshold=thr,
                     k=int(cfg.k) if act == "topk" else None, W_skip=skip, hook_in=hook_in,
                     hook_out=hook_out, layers=tuple(int(l) for l in layers),
                     model_name=model_name)
