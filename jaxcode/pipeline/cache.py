"""The activation-cache stage: a loaded model's hookpoints over a corpus, cached on disk.

`cache_activations(block, folder, lm, model_spec, hookpoints, mesh)` writes
folder/activations/ (the chunked cache of jaxcode.data.activations: manifest.json, tokens/,
one folder per hookpoint) and folder/results.json (token counts, tokens/s, one entry per
invocation in `runs`). `block` is a config block passed as it is: the extract experiment's
top-level config, or the atlas's `extract` block. Its fields:

  corpus, seq_len, max_tokens, batch_size, rows_per_chunk, dtype   required
  text_field, max_docs, drop_special, progress, compute_dtype      optional: DEFAULTS

Rerunning keeps every complete chunk whose checksums match and computes the rest, so a
killed job (SIGTERM, SIGKILL, preemption) finishes where it stopped; a finished cache is
reused while it still matches its sha256s (`intact`), and a damaged one is redone chunk by
chunk. SIGTERM/SIGINT during the stage raise `ExtractionStopped` (exit 143, with how to
resume). The stage's results.json is its final file (jaxcode.pipeline.stage).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.data import activations as acts
from jaxcode.data import corpus as corpus_lib
from jaxcode.errors import ConfigError, Preempted, positive_int
from jaxcode.pipeline import stage

CACHE = "activations"       # the cache's folder inside the stage folder
# The optional fields of a block, with their one default (the extract config sets them all).
DEFAULTS = dict(text_field="text", max_docs=0, drop_special=True, progress=True,
                compute_dtype="float32")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def setting(block, name: str):
  """block.name, or its DEFAULTS value when the block does not have the field."""
  return block.get(name, DEFAULTS[name]) if name in DEFAULTS else block[name]


def compute_dtype(block):
  """The forward dtype the model is loaded with (jnp dtype of block.compute_dtype)."""
  return COMPUTE_DTYPES[setting(block, "compute_dtype")]


def validate_block(block, hookpoints, data_axis: int, where: str = "") -> None:
  """Checks of the block alone (no files read); `data_axis` is the mesh's data axis size;
  `where` prefixes field names (e.g. 'extract.')."""
  try:
    _validate_block(block, hookpoints, data_axis)
  except ConfigError as e:
    raise ConfigError(f"{where}{e}") from None


def _validate_block(block, hookpoints, data_axis: int) -> None:
  if block.dtype not in acts.DTYPES:
    raise ConfigError(f"dtype={block.dtype!r}: expected one of {sorted(acts.DTYPES)}")
  cd = setting(block, "compute_dtype")
  if cd not in COMPUTE_DTYPES:
    raise ConfigError(f"compute_dtype={cd!r}: expected one of {sorted(COMPUTE_DTYPES)}")
  for name in ("seq_len", "batch_size", "rows_per_chunk"):
    positive_int(name, block[name])
  if block.rows_per_chunk % block.batch_size:
    raise ConfigError(f"rows_per_chunk={block.rows_per_chunk}: expected a multiple of "
                      f"batch_size={block.batch_size}")
  if not isinstance(block.max_tokens, int) or block.max_tokens < 0:
    raise ConfigError(f"max_tokens={block.max_tokens!r}: expected 0 (all) or a positive count")
  if 0 < block.max_tokens < block.seq_len:
    raise ConfigError(f"max_tokens={block.max_tokens}: expected 0 or at least seq_len="
                      f"{block.seq_len}")
  max_docs = setting(block, "max_docs")
  if not isinstance(max_docs, int) or max_docs < 0:
    raise ConfigError(f"max_docs={max_docs!r}: expected 0 (all) or a positive count")
  if not hookpoints:
    raise ConfigError("hookpoints=(): expected at least one hookpoint name")
  if block.batch_size % data_axis:
    raise ConfigError(f"batch_size={block.batch_size}: expected a multiple of the mesh data "
                      f"axis size {data_axis}")


def check_model(lm, hookpoints, seq_len: int) -> None:
  """The hookpoints exist in the loaded model and seq_len fits its positions."""
  lm.forward_fn(tuple(hookpoints))       # hookpoint or layer that does not exist
  n_ctx = getattr(lm.module, "n_ctx", None)
  if n_ctx is not None and seq_len > n_ctx:
    raise ConfigError(f"seq_len={seq_len}: the model allows at most {n_ctx} positions")


def check_cache_settings(cache_dir: str, block, hookpoints, model_name: str, revision) -> None:
  """A cache already in the folder must have been made with the same settings."""
  old = acts.read_manifest(cache_dir)
  if old is None:
    return
  want = dict(model=model_name, revision=revision, hookpoints=list(hookpoints),
              dtype=block.dtype, seq_len=block.seq_len, rows_per_chunk=block.rows_per_chunk,
              drop_special=setting(block, "drop_special"))
  for k, v in want.items():
    if old.get(k) != v:
      raise ConfigError(f"cache {cache_dir!r} was made with {k}={old.get(k)!r}, the config asks "
                        f"for {v!r}: use another workdir or delete the cache")


def pack_corpus(block, tokenizer) -> corpus_lib.Packed:
  """The block's whole corpus packed into rows of seq_len tokens."""
  docs = corpus_lib.load_corpus(block.corpus, setting(block, "text_field"),
                                setting(block, "max_docs") or None)
  return corpus_lib.pack(docs, tokenizer, block.seq_len)


def cached_rows(block, packed: corpus_lib.Packed) -> np.ndarray:
  """Indices of the packed rows the cache holds: max_tokens // seq_len rows evenly spaced
  over the packed corpus when max_tokens is set, else all."""
  N = packed.input_ids.shape[0]
  return corpus_lib.evenly_spaced(N, block.max_tokens // block.seq_len if block.max_tokens else N)


def load_packed(block, tokenizer) -> corpus_lib.Packed:
  """The rows of the block's packed corpus that the cache holds (cached_rows)."""
  packed = pack_corpus(block, tokenizer)
  return packed.take_rows(cached_rows(block, packed))


def tokens_by_source(packed: corpus_lib.Packed, drop_special: bool) -> dict[str, int]:
  """Cached tokens per corpus source (prose, code, ...)."""
  keep_NT = packed.attention_mask.astype(bool)
  if drop_special:
    keep_NT &= ~packed.special
  labels = packed.source_of_tokens()[keep_NT]
  names, counts = np.unique(labels.astype(str), return_counts=True)
  return {str(n) or "special": int(c) for n, c in zip(names, counts)}


def remove_stale_temporaries(cache_dir: str) -> int:
  """Deletes half-written files a killed run left (written under *.tmp<pid>, never renamed)."""
  stale = glob.glob(os.path.join(cache_dir, "**", "*.tmp*"), recursive=True)
  for f in stale:
    os.remove(f)
  return len(stale)


def damage(cache_dir: str) -> str:
  """'' when the folder's cache matches its checksums (or holds none yet), else a phrase
  naming the damaged files (the first four)."""
  try:
    bad = acts.ActivationCache.open(cache_dir, require_complete=False).corrupt_files()
  except ConfigError:
    return ""
  if not bad:
    return ""
  names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
  return f"{names} in {cache_dir} do not match the sha256 recorded in its manifest"


def intact(cache_dir: str) -> bool:
  """Whether a finished cache still matches its checksums (a corrupt chunk is recomputed)."""
  try:
    return not acts.ActivationCache.open(cache_dir).verify()
  except ConfigError:
    return False


class ExtractionStopped(Preempted):
  """SIGTERM/SIGINT during extraction: complete chunks are kept, a rerun resumes."""

  def __init__(self, signum: int, cache_dir: str):
    m = acts.read_manifest(cache_dir) or {}
    done, rows, per = len(m.get("chunks", [])), m.get("n_rows", 0), m.get("rows_per_chunk", 1)
    super().__init__(done, signum, f"extraction stopped by signal {signum} with {done} of "
                     f"{-(-rows // per)} chunks complete in {cache_dir}; rerun the same command "
                     "to resume")


@contextlib.contextmanager
def stop_on_signal(cache_dir: str):
  """Turns SIGTERM/SIGINT into ExtractionStopped (chunks and manifest are written atomically,
  so stopping anywhere keeps every complete chunk)."""
  def handler(signum, frame):
    raise ExtractionStopped(signum, cache_dir)
  old = {}
  try:
    for s in (signal.SIGTERM, signal.SIGINT):
      old[s] = signal.signal(s, handler)
  except ValueError:   # not the main thread
    pass
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def cache_activations(block, folder: str, lm, model_spec, hookpoints, mesh) -> dict:
  """The stage: folder/activations and folder/results.json (returned). `lm` is the loaded
  model of `model_spec` (a jaxcode.pipeline.model.ModelSpec), `mesh` the one it runs on.
  A complete folder whose cache matches its checksums is reused."""
  cache_dir = os.path.join(folder, CACHE)
  hookpoints = list(hookpoints)

  def reuse(done: dict) -> bool:    # callers that say why a cache is redone: damage()
    return bool(done.get("complete")) and intact(cache_dir)

  def compute() -> dict:
    check_model(lm, hookpoints, block.seq_len)
    check_cache_settings(cache_dir, block, hookpoints, model_spec.name, model_spec.revision)
    packed = load_packed(block, lm.tokenizer)
    with stop_on_signal(cache_dir):
      return _extract(block, folder, lm, model_spec, hookpoints, packed, mesh)

  return stage.run_stage("cache", folder, compute, reuse=reuse, log=False)


def _extract(block, folder: str, lm, model_spec, hookpoints, packed, mesh) -> dict:
  """Runs the extraction into folder/activations; returns the stage's results."""
  cache_dir = os.path.join(folder, CACHE)
  os.makedirs(cache_dir, exist_ok=True)
  stale = remove_stale_temporaries(cache_dir)
  drop = setting(block, "drop_special")
  info = acts.extract(lm, packed, hookpoints, cache_dir, batch_size=block.batch_size,
                      rows_per_chunk=block.rows_per_chunk, dtype=block.dtype,
                      drop_special=drop, model_name=model_spec.name,
                      revision=model_spec.revision, progress=setting(block, "progress"))
  manifest = acts.read_manifest(cache_dir)
  out = {"experiment": "extract", "variant": block.get("variant", ""), "model": model_spec.name,
         "model_dir": lm.model_dir, "revision": model_spec.revision, "hookpoints": hookpoints,
         "dtype": block.dtype, "compute_dtype": setting(block, "compute_dtype"),
         "seq_len": block.seq_len, "rows": int(packed.input_ids.shape[0]),
         "positions": int(packed.input_ids.size), "documents": len(packed.doc_ids),
         "cache": cache_dir, "complete": info["complete"], "n_tokens": int(manifest["n_tokens"]),
         "tokens_by_source": tokens_by_source(packed, drop),
         "chunks": len(manifest["chunks"]), "chunks_computed": len(info["computed"]),
         "chunks_kept": len(info["kept"]), "stale_temporaries_removed": stale,
         "tokens_computed": info["tokens"], "seconds": info["seconds"],
         "tokens_per_s": info["tokens_per_s"] if info["tokens"] else None,
         "cache_bytes": _dir_bytes(cache_dir), "device_count": jax.device_count(),
         "mesh": dict(mesh.shape)}
  _add_runs(out, os.path.join(folder, "results.json"))
  tps = f"{out['tokens_per_s']:.0f} tokens/s" if out["tokens_per_s"] else "nothing to compute"
  print(f"extract: {out['n_tokens']} tokens cached in {out['chunks']} chunks "
        f"({out['chunks_kept']} kept, {out['chunks_computed']} computed, {tps}) -> {cache_dir}",
        file=sys.stderr)
  return out


def _add_runs(out: dict, previous: str) -> None:
  """out['runs']: one entry per invocation (a resumed job has several), and the tokens/s
  over all of them."""
  runs = _previous_runs(previous)
  runs.append({k: out[k] for k in ("chunks_computed", "chunks_kept", "tokens_computed",
                                   "seconds", "tokens_per_s")})
  worked = [r for r in runs if r["tokens_computed"]]
  out["runs"] = runs
  out["tokens_per_s_all_runs"] = (sum(r["tokens_computed"] for r in worked) /
                                  sum(r["seconds"] for r in worked)) if worked else None


def _previous_runs(path: str) -> list:
  try:
    with open(path) as f:
      return list(json.load(f).get("runs", []))
  except (OSError, ValueError, AttributeError):
    return []


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
