"""Hugging Face checkpoints into our Flax modules: config, tokenizer, safetensors weights.

`load_pretrained(path_or_id, revision=None)` takes a local checkpoint directory
(`model.safetensors` or a sharded `model.safetensors.index.json`), a llama.cpp `.gguf`
file or the name of a packaged one ('gemma3-270m', 'smollm2-135m'; converted once into a
cached HF-layout directory by gguf.py), or, when online, a Hub id and revision (for
example Pythia's `step1000`), fetched with huggingface_hub.
The config comes from transformers.AutoConfig, the tokenizer from AutoTokenizer (no
torch needed), the weights from safetensors through each architecture's key map.
Every input problem is a one-line jaxcode.errors.ConfigError raised before compute.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxcode import parallel
from jaxcode.models.lm import bert, gemma, gpt2, gpt_neox, llama
from jaxcode.errors import ConfigError

ARCHS = {"gpt2": gpt2, "gpt_neox": gpt_neox, "bert": bert,
         **{t: llama for t in llama.MODEL_TYPES}, **{t: gemma for t in gemma.MODEL_TYPES}}
BLOCK_HOOKS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_hidden", "mlp_out",
               "resid_post")
GLOBAL_HOOKS = ("embed", "final", "logits")
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(\w+)")
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model")

# Megatron-style tensor parallelism on the `model` axis: input projections (q, k, v, gate,
# up) split their output features, output projections (o, down) their input features; the
# decoders' token embedding is split by vocabulary rows; norms and the rest are replicated.
# sharding_rules() adds, per module, that attention projections whose heads do not divide
# over the `model` axis stay whole (query/output: H heads, key/value: N KV heads).
SHARDING_RULES = (
    (r"(^|/)(q|k|v|query|key|value|c_fc|dense_h_to_4h|intermediate|embed_out|gate|up|lm_head)"
     r"/kernel$", P(None, parallel.MODEL)),
    (r"(^|/)(q|k|v|query|key|value|c_fc|dense_h_to_4h|intermediate|gate|up)/bias$",
     P(parallel.MODEL)),
    (r"(^|/)(c_proj_attn|c_proj_mlp|attn_dense|dense_4h_to_h|output|o|down)/kernel$",
     P(parallel.MODEL, None)),
    (r"(^|/)embed_tokens/embedding$", P(parallel.MODEL, None)),
)


def sharding_rules(module, mesh: Mesh) -> tuple:
  """SHARDING_RULES for this module on this mesh: K/V projections replicated unless the KV
  heads divide over the `model` axis (likewise q/o and the query heads)."""
  m = mesh.shape[parallel.MODEL]
  heads = getattr(module, "n_heads", None)
  kv_heads = getattr(module, "n_kv_heads", heads)
  keep = []
  if kv_heads and kv_heads % m:
    keep.append((r"(^|/)(k|v)/(kernel|bias)$", P()))
  if heads and heads % m:
    keep.append((r"(^|/)(q|o)/(kernel|bias)$", P()))
  return tuple(keep) + SHARDING_RULES


# ---------------------------------------------------------------- locating files

def resolve_dir(path_or_id: str, revision: str | None = None) -> str:
  """A local checkpoint directory: the path itself, a GGUF file's cached conversion, or a
  Hub snapshot when online."""
  p = os.path.expanduser(str(path_or_id))
  from jaxcode.models.lm import gguf
  if p in gguf.PACKAGES or p.endswith(".gguf"):
    if revision is not None:
      raise ConfigError(f"revision={revision!r} given for GGUF model {p!r}: revisions apply to "
                        "Hub ids only")
    return gguf.convert(p)      # llama.cpp file -> cached HF-layout directory (once)
  if os.path.isdir(p):
    if revision is not None:
      raise ConfigError(f"revision={revision!r} given for local directory {p!r}: "
                        "revisions apply to Hub ids only")
    return p
  if os.path.exists(p):
    raise ConfigError(f"model path {p!r} is a file: expected a checkpoint directory")
  if p.startswith((".", "/", "~")) or not _HUB_ID_RE.fullmatch(p):
    raise ConfigError(f"model directory {p!r} does not exist")
  try:
    import huggingface_hub
    return huggingface_hub.snapshot_download(
        p, revision=revision,
        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt"])
  except Exception as e:  # offline, unknown repo or revision, no network
    raise ConfigError(f"model {p!r} (revision {revision!r}) is neither a local directory nor "
                      f"fetchable from the Hugging Face Hub: {type(e).__name__}") from None


def load_config(model_dir: str):
  if not os.path.isfile(os.path.join(model_dir, "config.json")):
    raise ConfigError(f"{model_dir!r} has no config.json: expected a Hugging Face checkpoint dir")
  try:
    with open(os.path.join(model_dir, "config.json")) as f:
      model_type = json.load(f).get("model_type")
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"{model_dir}/config.json is not valid JSON: {e}") from None
  if model_type not in ARCHS:
    raise ConfigError(f"model_type={model_type!r} in {model_dir}/config.json: expected one of "
                      f"{sorted(ARCHS)}")
  import transformers
  return transformers.AutoConfig.from_pretrained(model_dir)


def load_tokenizer(model_dir: str):
  if not any(os.path.isfile(os.path.join(model_dir, f)) for f in _TOKENIZER_FILES):
    raise ConfigError(f"{model_dir!r} has no tokenizer (expected one of {list(_TOKENIZER_FILES)})")
  import transformers
  try:
    return transformers.AutoTokenizer.from_pretrained(model_dir)
  except Exception as e:
    raise ConfigError(f"tokenizer in {model_dir!r} could not be loaded: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def weight_files(model_dir: str) -> list[str]:
  """The safetensors files of a checkpoint (one file or the shards an index names)."""
  single, index = os.path.join(model_dir, _WEIGHTS), os.path.join(model_dir, _INDEX)
  if os.path.isfile(single):
    return [single]
  if os.path.isfile(index):
    try:
      with open(index) as f:
        names = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
      raise ConfigError(f"{index} is not a valid safetensors index: {type(e).__name__}") from None
    files = [os.path.join(model_dir, n) for n in names]
    for f in files:
      if not os.path.isfile(f):
        raise ConfigError(f"shard {f!r} named in {index} is missing")
    return files
  raise ConfigError(f"{model_dir!r} has no {_WEIGHTS} or {_INDEX} (pytorch_model.bin needs torch; "
                    "convert it to safetensors)")


def _check_safetensors(path: str) -> None:
  """Header parses and every tensor's byte range lies inside the file, or ConfigError."""
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      if size < 8 or n <= 0 or 8 + n > size:
        raise ValueError(f"header length {n} does not fit in {size} bytes")
      header = json.loads(f.read(n))
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
  except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path}: corrupt safetensors file ({str(e).splitlines()[0][:120]})") from None
  if 8 + n + max(ends, default=0) > size:
    raise ConfigError(f"{path}: truncated safetensors file ({size} bytes, the header needs "
                      f"{8 + n + max(ends)})")


class SafetensorsReader:
  """Keys and lazily read numpy tensors of one or more safetensors files, validated on open."""

  def __init__(self, files: Sequence[str]):
    from safetensors import safe_open
    self.where: dict[str, Any] = {}
    for path in files:
      _check_safetensors(path)
      try:
        h = safe_open(path, framework="numpy")
        keys = list(h.keys())
      except Exception as e:
        raise ConfigError(f"{path}: corrupt safetensors file "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
      for k in keys:
        self.where[k] = h

  def keys(self):
    return self.where.keys()

  def get(self, key: str) -> np.ndarray:
    try:
      return self.where[key].get_tensor(key)
    except Exception as e:
      raise ConfigError(f"tensor {key!r}: unreadable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]})") from None


def _resolve_key(names, prefix: str, available) -> str | None:
  names = (names,) if isinstance(names, str) else names
  for n in names:
    stripped = n[len(prefix):] if n.startswith(prefix) else n
    for cand in (n, stripped, prefix + stripped):
      if cand in available:
        return cand
  return None


def _set(tree: dict, path: tuple[str, ...], value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


# ---------------------------------------------------------------- the loaded model

def parse_hookpoints(hookpoints, n_layers: int) -> tuple[tuple[str, ...], int, bool]:
  """(names, blocks needed, head needed); ConfigError for a name or layer that does not exist."""
  names = (hookpoints,) if isinstance(hookpoints, str) else tuple(hookpoints)
  if not names:
    raise ConfigError("hookpoints=(): expected at least one hookpoint name")
  n_blocks, head = 0, False
  for name in names:
    m = _BLOCK_RE.fullmatch(name)
    if m:
      i, kind = int(m.group(1)), m.group(2)
      if kind not in BLOCK_HOOKS:
        raise ConfigError(f"hookpoint {name!r}: expected blocks.<i>.<one of {list(BLOCK_HOOKS)}>")
      if i >= n_layers:
        raise ConfigError(f"hookpoint {name!r}: layer {i} does not exist (the model has "
                          f"{n_layers} blocks, 0..{n_layers - 1})")
      n_blocks = max(n_blocks, i + 1)
    elif name in ("final", "logits"):
      n_blocks, head = n_layers, True
    elif name != "embed":
      raise ConfigError(f"hookpoint {name!r}: expected embed, final, logits or "
                        f"blocks.<i>.<one of {list(BLOCK_HOOKS)}>")
  return names, n_blocks, head


@dataclass
class PretrainedLM:
  """A loaded model: `apply(input_ids, attention_mask, hookpoints)` -> {name: array}."""
  config: Any
  tokenizer: Any
  params: Any
  module: Any
  model_dir: str
  revision: str | None = None
  mesh: Mesh | None = None
  has_logits: bool = True
  _fns: dict = field(default_factory=dict, repr=False)

  @property
  def model_type(self) -> str:
    return self.config.model_type

  @property
  def n_layers(self) -> int:
    return self.module.n_layers

  @property
  def d_model(self) -> int:
    return self.module.d_model

  def hookpoint_names(self) -> list[str]:
    out = ["embed"] + [f"blocks.{i}.{k}" for i in range(self.n_layers) for k in BLOCK_HOOKS]
    return out + ["final"] + (["logits"] if self.has_logits else [])

  def hookpoint_width(self, name: str) -> int:
    if name.endswith(".mlp_hidden"):  # every other block hookpoint is d_model wide
      return self.module.d_mlp
    return self.module.vocab if name == "logits" else self.module.d_model

  def forward_fn(self, hookpoints):
    """The jitted pure function (params, ids, mask) -> {name: array} for these hookpoints."""
    names, n_blocks, head = parse_hookpoints(hookpoints, self.n_layers)
    if "logits" in names and not self.has_logits:
      raise ConfigError(f"hookpoint 'logits': the checkpoint in {self.model_dir!r} has no LM head")
    key = names
    if key not in self._fns:
      module = self.module

      def fwd(params, input_ids_BT, mask_BT):
        rec = module.apply({"params": params}, input_ids_BT, mask_BT, n_blocks, head)
        return {n: rec[n] for n in names}
      self._fns[key] = jax.jit(fwd)
    return self._fns[key]

  def apply(self, input_ids, attention_mask=None, hookpoints=("final",)):
    fn = self.forward_fn(hookpoints)  # validates names before any compute
    ids = np.asarray(input_ids) if not isinstance(input_ids, jax.Array) else input_ids
    if ids.ndim != 2:
      raise ConfigError(f"input_ids of shape {tuple(ids.shape)}: expected [batch, seq]")
    if ids.shape[1] > getattr(self.module, "n_ctx", ids.shape[1]):
      raise ConfigError(f"sequence length {ids.shape[1]}: the model allows at most "
                        f"{self.module.n_ctx}")
    mask = (np.ones(ids.shape, np.int32) if attention_mask is None else attention_mask)
    if tuple(mask.shape) != tuple(ids.shape):
      raise ConfigError(f"attention_mask of shape {tuple(mask.shape)}: expected {tuple(ids.shape)}")
    if self.mesh is not None and ids.shape[0] % self.mesh.shape[parallel.DATA] == 0:
      sh = parallel.batch_sharding(self.mesh, 2)
      ids, mask = jax.device_put(ids, sh), jax.device_put(mask, sh)
    return fn(self.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

  def tokenize(self, texts: Sequence[str], max_length: int | None = None):
    """Padded numpy ids and mask for a list of strings (truncated at max_length)."""
    enc = self.tokenizer(list(texts), padding=True, truncation=max_length is not None,
                         max_length=max_length, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def build_module(cfg, dtype=jnp.float32, has_head: bool = True):
  arch = ARCHS[cfg.model_type]
  module = arch.from_hf_config(cfg, dtype=dtype)
  if cfg.model_type == "bert":
    module = module.clone(mlm_head=has_head)
  elif hasattr(module, "lm_head") and not getattr(module, "tied", False):
    module = module.clone(lm_head=has_head)
  return module


def load_params(cfg, reader: SafetensorsReader, module, mesh: Mesh | None = None):
  """Params pytree from the checkpoint through the architecture's key map, shape-checked."""
  arch = ARCHS[cfg.model_type]
  abstract = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                          jnp.ones((1, 2), jnp.int32), module.n_layers, True))["params"]
  shardings = (parallel.tree_shardings(abstract, mesh, sharding_rules(module, mesh))
               if mesh is not None else None)
  params: dict = {}
  available = set(reader.keys())
  for path, (names, transform) in arch.hf_key_map(cfg).items():
    try:
      want = _get(abstract, path)
    except KeyError:
      continue  # e.g. the head of a headless module
    key = _resolve_key(names, arch.HF_PREFIX, available)
    if key is None:
      raise ConfigError(f"weight {names if isinstance(names, str) else names[0]!r} for "
                        f"{'/'.join(path)} is missing from the checkpoint")
    arr = reader.get(key)
    arr = np.asarray(transform(arr) if transform else arr, np.float32)
    if arr.shape != want.shape:
      raise ConfigError(f"weight {key!r}: shape {arr.shape} after mapping, config expects "
                        f"{want.shape} for {'/'.join(path)}")
    leaf = (jax.device_put(arr, _get(shardings, path)) if shardings is not None
            else jnp.asarray(arr))
    _set(params, path, leaf)
  return params


def has_head_weights(cfg, reader: SafetensorsReader) -> bool:
  arch = ARCHS[cfg.model_type]
  kmap = arch.hf_key_map(cfg)
  available = set(reader.keys())
  return all(_resolve_key(kmap[p][0], arch.HF_PREFIX, available) is not None
             for p in arch.HEAD_PATHS if p in kmap)


def load_pretrained(path_or_id, revision: str | None = None, *, mesh: Mesh | None = None,
                    dtype=jnp.float32, tokenizer: bool = True) -> PretrainedLM:
  """Loads a checkpoint of one of ARCHS (local dir or Hub id) into a PretrainedLM.

  dtype is the compute dtype (jnp.bfloat16 for mixed precision); parameters stay float32.
  With a mesh, parameters are laid out by sharding_rules() and inputs sharded over `data`.
  """
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                              jnp.dtype(jnp.float16)):
    raise ConfigError(f"dtype={dtype}: expected float32, bfloat16 or float16")
  model_dir = resolve_dir(path_or_id, revision)
  cfg = load_config(model_dir)
  files = weight_files(model_dir)
  tok = load_tokenizer(model_dir) if tokenizer else None
  reader = SafetensorsReader(files)
  head = has_head_weights(cfg, reader)
  module = build_module(cfg, dtype, head)
  params = load_params(cfg, reader, module, mesh)
  return PretrainedLM(config=cfg, tokenizer=tok, params=params, module=module,
                      model_dir=model_dir, revision=revision, mesh=mesh, has_logits=head)
