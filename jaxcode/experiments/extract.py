"""Activation extraction: model + corpus -> the chunked activation cache, resumable.

run(config, workdir) writes workdir/config.json, the cache workdir/activations/
(manifest.json, tokens/, one folder per hookpoint; see jaxcode.data.activations) and
workdir/results.json (token counts, tokens/s). Rerunning the same command keeps every
complete chunk whose checksums match and computes the rest, so a killed job (SIGTERM,
SIGKILL, preemption) finishes where it stopped; a chunk cut off mid-write is never in the
manifest and is redone. One process, data-parallel over its local devices.
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

from jaxcode import parallel
from jaxcode.data import activations as acts
from jaxcode.data import corpus as corpus_lib
from jaxcode import workdir as workdir_lib
from jaxcode.models import lm as lm_lib
from jaxcode.errors import ConfigError, Preempted

CACHE = "activations"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_location(config) -> tuple[str, str]:
  """(path or Hub id to load, the model name recorded in the manifest)."""
  if config.model == "minilm":
    return lm_lib.minilm_path(), MINILM_ID
  return str(config.model), str(config.model)


def _positive(name: str, v) -> int:
  if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
    raise ConfigError(f"{name}={v!r}: expected a positive integer")
  return v


def validate_settings(config, mesh=None) -> None:
  """Checks of the config alone (no files read); `mesh` overrides config.mesh."""
  if config.dtype not in acts.DTYPES:
    raise ConfigError(f"dtype={config.dtype!r}: expected one of {sorted(acts.DTYPES)}")
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"compute_dtype={config.compute_dtype!r}: expected one of "
                      f"{sorted(COMPUTE_DTYPES)}")
  for name in ("seq_len", "batch_size", "rows_per_chunk"):
    _positive(name, config[name])
  if config.rows_per_chunk % config.batch_size:
    raise ConfigError(f"rows_per_chunk={config.rows_per_chunk}: expected a multiple of "
                      f"batch_size={config.batch_size}")
  if not isinstance(config.max_tokens, int) or config.max_tokens < 0:
    raise ConfigError(f"max_tokens={config.max_tokens!r}: expected 0 (all) or a positive count")
  if 0 < config.max_tokens < config.seq_len:
    raise ConfigError(f"max_tokens={config.max_tokens}: expected 0 or at least seq_len="
                      f"{config.seq_len}")
  if not isinstance(config.max_docs, int) or config.max_docs < 0:
    raise ConfigError(f"max_docs={config.max_docs!r}: expected 0 (all) or a positive count")
  if not config.hookpoints:
    raise ConfigError("hookpoints=(): expected at least one hookpoint name")
  if mesh is None:
    data, _ = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                          jax.device_count())
  else:
    data = mesh.shape[parallel.DATA]
  if config.batch_size % data:
    raise ConfigError(f"batch_size={config.batch_size}: expected a multiple of the mesh data "
                      f"axis size {data}")


def check_cache_settings(cache_dir: str, config, model_name: str, revision) -> None:
  """A cache already in the workdir must have been made with the same settings."""
  old = acts.read_manifest(cache_dir)
  if old is None:
    return
  want = dict(model=model_name, revision=revision, hookpoints=list(config.hookpoints),
              dtype=config.dtype, seq_len=config.seq_len, rows_per_chunk=config.rows_per_chunk,
              drop_special=config.drop_special)
  for k, v in want.items():
    if old.get(k) != v:
      raise ConfigError(f"cache {cache_dir!r} was made with {k}={old.get(k)!r}, the config asks "
                        f"for {v!r}: use another workdir or delete the cache")


def load_model(config, mesh):
  path, name = model_location(config)
  revision = config.revision or None
  lm = lm_lib.load_pretrained(path, revision, mesh=mesh,
                              dtype=COMPUTE_DTYPES[config.compute_dtype])
  lm.forward_fn(tuple(config.hookpoints))       # hookpoint or layer that does not exist
  n_ctx = getattr(lm.module, "n_ctx", None)
  if n_ctx is not None and config.seq_len > n_ctx:
    raise ConfigError(f"seq_len={config.seq_len}: the model allows at most {n_ctx} positions")
  return lm, name


def load_packed(config, tokenizer) -> corpus_lib.Packed:
  docs = corpus_lib.load_corpus(config.corpus, config.text_field, config.max_docs or None)
  packed = corpus_lib.pack(docs, tokenizer, config.seq_len)
  if config.max_tokens:
    packed = packed.evenly_spaced_rows(config.max_tokens // config.seq_len)
  return packed


def tokens_by_source(packed: corpus_lib.Packed, drop_special: bool) -> dict[str, int]:
  keep = packed.attention_mask.astype(bool)
  if drop_special:
    keep &= ~packed.special
  labels = packed.source_of_tokens()[keep]
  names, counts = np.unique(labels.astype(str), return_counts=True)
  return {str(n) or "special": int(c) for n, c in zip(names, counts)}


def remove_stale_temporaries(cache_dir: str) -> int:
  """Deletes half-written files a killed run left (written under *.tmp<pid>, never renamed)."""
  stale = glob.glob(os.path.join(cache_dir, "**", "*.tmp*"), recursive=True)
  for f in stale:
    os.remove(f)
  return len(stale)


def run(config, workdir: str, mesh=None) -> dict:
  """Extracts (or finishes extracting) the configured activations into workdir/activations.

  `mesh` overrides config.mesh (tests use it to run on a subset of the devices).
  """
  validate_settings(config, mesh)
  cache_dir = os.path.join(workdir, CACHE)
  return workdir_lib.run_owned(workdir, config, "extract", lambda: _load_and_extract(config, workdir, mesh),
                          still_valid=lambda: _intact(cache_dir))


def _load_and_extract(config, workdir: str, mesh) -> dict:
  cache_dir = os.path.join(workdir, CACHE)
  mesh = parallel.mesh_from_config(config.mesh) if mesh is None else mesh
  lm, model_name = load_model(config, mesh)
  check_cache_settings(cache_dir, config, model_name, config.revision or None)
  packed = load_packed(config, lm.tokenizer)
  with _stop_on_signal(cache_dir):
    return _extract(config, workdir, lm, model_name, packed, mesh)


def _intact(cache_dir: str) -> bool:
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
def _stop_on_signal(cache_dir: str):
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


def _extract(config, workdir: str, lm, model_name: str, packed, mesh) -> dict:
  cache_dir = os.path.join(workdir, CACHE)
  os.makedirs(cache_dir, exist_ok=True)
  stale = remove_stale_temporaries(cache_dir)
  info = acts.extract(lm, packed, list(config.hookpoints), cache_dir,
                      batch_size=config.batch_size, rows_per_chunk=config.rows_per_chunk,
                      dtype=config.dtype, drop_special=config.drop_special,
                      model_name=model_name, progress=config.progress)
  manifest = acts.read_manifest(cache_dir)
  n_chunks = len(manifest["chunks"])
  out = {"experiment": "extract", "variant": config.get("variant", ""), "model": model_name,
         "model_dir": lm.model_dir, "revision": lm.revision, "hookpoints": list(config.hookpoints),
         "dtype": config.dtype, "compute_dtype": config.compute_dtype, "seq_len": config.seq_len,
         "rows": int(packed.input_ids.shape[0]), "positions": int(packed.input_ids.size),
         "documents": len(packed.doc_ids), "cache": cache_dir, "complete": info["complete"],
         "n_tokens": int(manifest["n_tokens"]),
         "tokens_by_source": tokens_by_source(packed, config.drop_special),
         "chunks": n_chunks, "chunks_computed": len(info["computed"]),
         "chunks_kept": len(info["kept"]), "stale_temporaries_removed": stale,
         "tokens_computed": info["tokens"], "seconds": info["seconds"],
         "tokens_per_s": info["tokens_per_s"] if info["tokens"] else None,
         "cache_bytes": _dir_bytes(cache_dir), "device_count": jax.device_count(),
         "mesh": dict(mesh.shape)}
  runs = _previous_runs(os.path.join(workdir, "results.json"))
  runs.append({k: out[k] for k in ("chunks_computed", "chunks_kept", "tokens_computed",
                                   "seconds", "tokens_per_s")})
  worked = [r for r in runs if r["tokens_computed"]]
  out["runs"] = runs           # one entry per invocation (a resumed job has several)
  out["tokens_per_s_all_runs"] = (sum(r["tokens_computed"] for r in worked) /
                                  sum(r["seconds"] for r in worked)) if worked else None
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  tps = f"{out['tokens_per_s']:.0f} tokens/s" if out["tokens_per_s"] else "nothing to compute"
  print(f"extract: {out['n_tokens']} tokens cached in {n_chunks} chunks "
        f"({out['chunks_kept']} kept, {out['chunks_computed']} computed, {tps}) -> {cache_dir}",
        file=sys.stderr)
  return out


def _previous_runs(path: str) -> list:
  try:
    with open(path) as f:
      return list(json.load(f).get("runs", []))
  except (OSError, ValueError, AttributeError):
    return []


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
