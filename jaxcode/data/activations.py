"""Activation extraction into a chunked, resumable on-disk cache, and its random-access reader.

Layout of a cache directory:
  manifest.json                  model, revision, hookpoints, dtype, widths, corpus
                                 fingerprint, and per complete chunk its rows, token
                                 count and the sha256 of every file
  tokens/chunk_00007.npz         token_ids, doc_index, row, col of the kept tokens
  <hookpoint>/chunk_00007.npy    [n_tokens, width] activations (bfloat16 stored as uint16)

Chunk i covers packed rows [i * rows_per_chunk, (i + 1) * rows_per_chunk). Special
tokens (BOS/CLS/SEP/EOS) and padding are dropped by default. Files are written under a
temporary name and renamed; the manifest is rewritten after each chunk. A rerun with the
same settings keeps every chunk whose files match their checksums and recomputes the
rest, so an interrupted extraction finishes where it stopped and a truncated or corrupt
chunk is redone. The reader checks each file against the manifest's sha256 the first time
this process reads it (later reads, by any reader, skip the hash): a damaged file is a
one-line ConfigError naming it, never silently wrong activations. `write_arrays` writes a
cache of activations already in memory (no model). This is the one on-disk activation format
(SAE training reads it through jaxcode.data.sources.ActivationCacheSource).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxcode import faults
from jaxcode.data.corpus import Packed
from jaxcode.errors import ConfigError

MANIFEST = "manifest.json"
VERSION = 1
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# bfloat16 has no .npy type: stored as its uint16 bit pattern, viewed back on read.
_STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def hook_dir(hookpoint: str) -> str:
  """The folder of a hookpoint's chunks inside a cache."""
  return hookpoint.replace("/", "_")


def sha256_file(path: str) -> str:
  """The hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def corpus_fingerprint(packed: Packed) -> str:
  """The sha256 of the packed token ids, masks and special flags (which corpus was cached)."""
  h = hashlib.sha256()
  for a in (packed.input_ids, packed.attention_mask, packed.special):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _atomic_write(path: str, write) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def _write_manifest(out_dir: str, manifest: dict) -> None:
  _atomic_write(os.path.join(out_dir, MANIFEST),
                lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def read_manifest(out_dir: str) -> dict | None:
  """The cache's manifest, None when there is none; unreadable is a ConfigError."""
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"{path} is unreadable ({type(e).__name__}): delete it to start over") from None


def _chunk_files(i: int, hookpoints: Sequence[str]) -> dict[str, str]:
  files = {"tokens": os.path.join("tokens", f"chunk_{i:05d}.npz")}
  files.update({h: os.path.join(hook_dir(h), f"chunk_{i:05d}.npy") for h in hookpoints})
  return files


# (absolute path, sha256) of the cache files whose contents were hashed and found to match
# in this process: a file is hashed on its first read only, not by every reader.
_VERIFIED: set[tuple[str, str]] = set()


def _file_ok(path: str, digest: str) -> bool:
  """Hashes the file now; records (or forgets) it as verified for later reads."""
  key = (os.path.abspath(path), digest)
  ok = os.path.isfile(path) and sha256_file(path) == digest
  if ok:
    _VERIFIED.add(key)
  else:
    _VERIFIED.discard(key)
  return ok


def _bad_files(out_dir: str, entry: dict) -> list[str]:
  """Files of a chunk (relative paths) missing or not matching their sha256; hashes all."""
  return [rel for rel, digest in entry["sha256"].items()
          if not _file_ok(os.path.join(out_dir, rel), digest)]


def _chunk_ok(out_dir: str, entry: dict) -> bool:
  return not _bad_files(out_dir, entry)


def verified_path(out_dir: str, entry: dict, rel: str) -> str:
  """The path of a chunk file, checked against the manifest's sha256 on its first read in
  this process; a missing, truncated or corrupt file is a one-line ConfigError naming it."""
  path = os.path.join(out_dir, rel)
  digest = entry.get("sha256", {}).get(rel)
  if digest is not None and (os.path.abspath(path), digest) in _VERIFIED:
    return path
  fix = ("rerun the extraction into this cache (the same command and workdir), which "
         "recomputes the chunk")
  where = os.path.join(out_dir, MANIFEST)
  if digest is None:
    raise ConfigError(f"{path}: {where} records no sha256 for it: {fix}")
  if not os.path.isfile(path):
    raise ConfigError(f"{path} is missing (listed in {where}): {fix}")
  if not _file_ok(path, digest):
    raise ConfigError(f"{path} does not match the sha256 recorded in {where} (corrupt or "
                      f"truncated): {fix}")
  return path


_SETTINGS = ("model", "revision", "hookpoints", "dtype", "seq_len", "rows_per_chunk",
             "drop_special", "corpus_fingerprint", "n_rows")


def _check_same(old: dict, new: dict, out_dir: str) -> None:
  for k in _SETTINGS:
    if old.get(k) != new.get(k):
      raise ConfigError(f"cache {out_dir!r} was made with {k}={old.get(k)!r}, requested "
                        f"{new.get(k)!r}: use another directory or delete it")


def extract(lm, packed: Packed, hookpoints: Sequence[str], out_dir: str, *,
            batch_size: int = 32, rows_per_chunk: int = 256, dtype: str = "float32",
            drop_special: bool = True, model_name: str | None = None,
            revision: str | None = None, max_new_chunks: int | None = None,
            progress: bool = True) -> dict:
  """Runs `lm` over the packed corpus and caches the hookpoints; returns a summary.

  `revision` (default: the loaded model's) is recorded in the manifest. max_new_chunks stops
  after computing that many chunks (an interruption, for tests and time-limited jobs);
  rerunning continues.
  """
  hookpoints = list(hookpoints)
  _check_extract_args(lm, hookpoints, dtype, batch_size, rows_per_chunk)
  settings = _settings(lm, packed, hookpoints, dtype, rows_per_chunk, drop_special,
                       model_name, lm.revision if revision is None else revision)
  n_rows = settings["n_rows"]
  n_chunks = -(-n_rows // rows_per_chunk)
  manifest, done, todo = _resume(out_dir, settings, n_chunks, max_new_chunks)
  keep_all_NT = packed.attention_mask.astype(bool) & (~packed.special if drop_special else True)
  bar = _progress(sum(int(keep_all_NT[i * rows_per_chunk:(i + 1) * rows_per_chunk].sum())
                      for i in todo), progress)
  t0, tokens = time.perf_counter(), 0
  for i in todo:
    r0, r1 = i * rows_per_chunk, min((i + 1) * rows_per_chunk, n_rows)
    acts = _forward_rows(lm, packed, hookpoints, r0, r1, batch_size, dtype, keep_all_NT)
    done[i] = _write_chunk(out_dir, i, lm, packed, acts, r0, r1, keep_all_NT[r0:r1], dtype)
    manifest["chunks"] = sorted(done.values(), key=lambda e: e["index"])
    _write_manifest(out_dir, manifest)
    tokens += done[i]["n_tokens"]
    bar.update(done[i]["n_tokens"])
  bar.close()
  manifest["complete"] = len(done) == n_chunks
  manifest["n_tokens"] = sum(e["n_tokens"] for e in done.values())
  _write_manifest(out_dir, manifest)
  dt = time.perf_counter() - t0
  return dict(computed=todo, kept=sorted(set(done) - set(todo)), complete=manifest["complete"],
              tokens=tokens, seconds=dt, tokens_per_s=tokens / dt if dt > 0 else float("nan"))


def _check_extract_args(lm, hookpoints, dtype: str, batch_size: int, rows_per_chunk: int):
  """Hookpoint names, cache dtype and sizes, checked before any compute."""
  lm.forward_fn(tuple(hookpoints))  # validates hookpoint names before any compute
  if dtype not in DTYPES:
    raise ConfigError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
  if batch_size < 1 or rows_per_chunk < 1 or rows_per_chunk % batch_size:
    raise ConfigError(f"rows_per_chunk={rows_per_chunk}, batch_size={batch_size}: expected "
                      "positive sizes with rows_per_chunk a multiple of batch_size")


def _settings(lm, packed: Packed, hookpoints, dtype, rows_per_chunk, drop_special, model_name,
              revision) -> dict:
  """The manifest's description of the cache (what a resumed run must agree with)."""
  n_rows, seq_len = packed.input_ids.shape
  return dict(version=VERSION, model=model_name or lm.model_dir, revision=revision,
              hookpoints=hookpoints, dtype=dtype, seq_len=int(seq_len),
              rows_per_chunk=rows_per_chunk, drop_special=drop_special,
              corpus_fingerprint=corpus_fingerprint(packed), n_rows=int(n_rows),
              widths={h: lm.hookpoint_width(h) for h in hookpoints},
              doc_ids=packed.doc_ids, sources=packed.sources)


def _resume(out_dir: str, settings: dict, n_chunks: int, max_new_chunks: int | None):
  """(manifest, intact chunks by index, indices to compute) of a new or partial cache; the
  manifest is rewritten as incomplete, listing the intact chunks only."""
  os.makedirs(out_dir, exist_ok=True)
  old = read_manifest(out_dir)
  if old is not None:
    _check_same(old, settings, out_dir)
  done = {e["index"]: e for e in (old or {}).get("chunks", []) if _chunk_ok(out_dir, e)}
  todo = [i for i in range(n_chunks) if i not in done]
  if max_new_chunks is not None:
    todo = todo[:max_new_chunks]
  manifest = dict(settings, chunks=sorted(done.values(), key=lambda e: e["index"]))
  manifest["complete"] = False
  _write_manifest(out_dir, manifest)
  return manifest, done, todo


def _forward_rows(lm, packed: Packed, hookpoints, r0: int, r1: int, batch_size: int,
                  dtype: str, keep_all_NT) -> dict[str, list]:
  """Activations of rows [r0, r1) at the kept positions, per hookpoint a list of [n, D]
  blocks; batch b is dispatched before batch b-1 is fetched (host copy overlaps compute)."""
  acts = {h: [] for h in hookpoints}
  pending = None
  for b0 in range(r0, r1 + batch_size, batch_size):
    nxt = None
    if b0 < r1:
      ids_BT, mask_BT = _batch(packed, b0, min(b0 + batch_size, r1), batch_size)
      nxt = (b0, min(b0 + batch_size, r1), _dispatch(lm, hookpoints, ids_BT, mask_BT, dtype))
    if pending is not None:
      p0, p1, out = pending
      keep = keep_all_NT[p0:p1]
      for h in hookpoints:
        a = np.asarray(out[h])[: p1 - p0]
        acts[h].append(a[keep])
    pending = nxt
  return acts


def _write_chunk(out_dir: str, i: int, lm, packed: Packed, acts: dict, r0: int, r1: int,
                 keep_RT, dtype: str) -> dict:
  """Writes chunk i's token file and activation files (atomically); returns its manifest
  entry (rows, token count, sha256 of every file)."""
  hookpoints = list(acts)
  rows, cols = np.nonzero(keep_RT)
  tok = dict(token_ids=packed.input_ids[r0:r1][keep_RT].astype(np.int32),
             doc_index=packed.doc_index[r0:r1][keep_RT].astype(np.int32),
             row=(rows + r0).astype(np.int32), col=cols.astype(np.int32))
  files = _chunk_files(i, hookpoints)
  _atomic_write(os.path.join(out_dir, files["tokens"]), lambda f: np.savez(f, **tok))
  cast = DTYPES[dtype]
  for h in hookpoints:
    arr = (np.concatenate(acts[h]) if acts[h] else
           np.zeros((0, lm.hookpoint_width(h)), cast))
    arr = np.ascontiguousarray(arr.astype(cast).view(_STORED[dtype]))
    _atomic_write(os.path.join(out_dir, files[h]), lambda f: np.save(f, arr))
  digests = _record_digests(out_dir, files)
  faults.point("cache.chunk")     # crash tests: files written, manifest not yet
  return dict(index=i, rows=[r0, r1], n_tokens=int(keep_RT.sum()), sha256=digests)


def _record_digests(out_dir: str, files: dict[str, str]) -> dict[str, str]:
  """sha256 of each just-written file, recorded as verified (no rehash on read)."""
  digests = {}
  for rel in files.values():
    path = os.path.join(out_dir, rel)
    digests[rel] = sha256_file(path)
    _VERIFIED.add((os.path.abspath(path), digests[rel]))
  return digests


def write_arrays(out_dir: str, acts_ND: dict[str, np.ndarray], tokens_per_chunk: int,
                 model: str = "arrays") -> str:
  """A complete cache of activations held in memory ({hookpoint: [N, D]}, one N for all;
  no model, no corpus: token files record row = token index, col 0, ids and documents -1),
  in the layout `extract` writes: for tests and callers that have activations already."""
  hookpoints = list(acts_ND)
  n = {int(np.shape(a)[0]) for a in acts_ND.values()}
  if len(n) != 1 or tokens_per_chunk < 1:
    raise ConfigError(f"write_arrays: expected one row count for all hookpoints and "
                      f"tokens_per_chunk >= 1, got {sorted(n)} and {tokens_per_chunk}")
  n_tok = n.pop()
  dtype = str(np.asarray(next(iter(acts_ND.values()))).dtype)
  if dtype not in DTYPES:
    raise ConfigError(f"write_arrays: dtype {dtype}: expected one of {sorted(DTYPES)}")
  chunks = []
  for i, t0 in enumerate(range(0, n_tok, tokens_per_chunk)):
    t1 = min(t0 + tokens_per_chunk, n_tok)
    files = _chunk_files(i, hookpoints)
    idx = np.arange(t0, t1, dtype=np.int32)
    tok = dict(token_ids=np.full(t1 - t0, -1, np.int32), doc_index=np.full(t1 - t0, -1, np.int32),
               row=idx, col=np.zeros(t1 - t0, np.int32))
    _atomic_write(os.path.join(out_dir, files["tokens"]), lambda f: np.savez(f, **tok))
    for h in hookpoints:
      arr = np.ascontiguousarray(np.asarray(acts_ND[h][t0:t1]).view(_STORED[dtype]))
      _atomic_write(os.path.join(out_dir, files[h]), lambda f: np.save(f, arr))
    chunks.append(dict(index=i, rows=[t0, t1], n_tokens=t1 - t0,
                       sha256=_record_digests(out_dir, files)))
  _write_manifest(out_dir, dict(
      version=VERSION, model=model, revision=None, hookpoints=hookpoints, dtype=dtype,
      widths={h: int(np.shape(a)[1]) for h, a in acts_ND.items()}, complete=True,
      n_tokens=n_tok, chunks=chunks))
  return out_dir


def _batch(packed: Packed, b0: int, b1: int, batch_size: int):
  ids, mask = packed.input_ids[b0:b1], packed.attention_mask[b0:b1]
  if b1 - b0 < batch_size:  # pad the last batch to a fixed shape (one compilation)
    pad = batch_size - (b1 - b0)
    ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
    mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
  return ids, mask


def _dispatch(lm, hookpoints, ids, mask, dtype):
  """Starts the forward (asynchronously) and the cast to the cache dtype on device."""
  out = lm.apply(ids, mask, tuple(hookpoints))
  jd = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}[dtype]
  return {h: v.astype(jd) for h, v in out.items()}


def _progress(total: int, enabled: bool):
  try:
    from tqdm import tqdm
    return tqdm(total=total, unit="tok", unit_scale=True, disable=not enabled or total == 0,
                file=sys.stderr, desc="extract")    # no bar when nothing is left to compute
  except ImportError:  # pragma: no cover
    class _Nop:
      def update(self, n): pass
      def close(self): pass
    return _Nop()


# ---------------------------------------------------------------- reading

@dataclass
class ActivationCache:
  """Random access to a complete cache: `get(hookpoint, token_indices)` -> [n, width].
  Every file is checked against its recorded sha256 on its first read in this process."""
  path: str
  manifest: dict

  @classmethod
  def open(cls, path: str, model: str | None = None, hookpoints: Sequence[str] | None = None,
           require_complete: bool = True) -> "ActivationCache":
    m = read_manifest(path)
    if m is None:
      raise ConfigError(f"{path!r} has no {MANIFEST}: not an activation cache")
    if model is not None and m["model"] != model:
      raise ConfigError(f"cache {path!r} holds model {m['model']!r}, requested {model!r}")
    for h in hookpoints or ():
      if h not in m["hookpoints"]:
        raise ConfigError(f"cache {path!r} has no hookpoint {h!r} (it has {m['hookpoints']})")
    if require_complete and not m.get("complete"):
      raise ConfigError(f"cache {path!r} is incomplete: rerun the extraction to finish it")
    return cls(path, m)

  def __post_init__(self):
    self.chunks = sorted(self.manifest["chunks"], key=lambda e: e["index"])
    self.offsets = np.cumsum([0] + [e["n_tokens"] for e in self.chunks])
    self._mmaps: dict = {}

  @property
  def hookpoints(self) -> list[str]:
    return list(self.manifest["hookpoints"])

  @property
  def n_tokens(self) -> int:
    return int(self.offsets[-1])

  @property
  def dtype(self):
    return DTYPES[self.manifest["dtype"]]

  def width(self, hookpoint: str) -> int:
    return int(self.manifest["widths"][hookpoint])

  def verify(self) -> list[int]:
    """Indices of chunks whose files do not match their checksums (empty when intact).
    Hashes every file now; the intact ones are not hashed again when read."""
    return [e["index"] for e in self.chunks if not _chunk_ok(self.path, e)]

  def corrupt_files(self) -> list[str]:
    """Like verify(), but the files (relative to the cache) that are missing or corrupt."""
    return [rel for e in self.chunks for rel in _bad_files(self.path, e)]

  def _file(self, k: int, rel: str) -> str:
    return verified_path(self.path, self.chunks[k], rel)

  def _chunk(self, hookpoint: str, k: int) -> np.ndarray:
    key = (hookpoint, k)
    if key not in self._mmaps:
      rel = _chunk_files(self.chunks[k]["index"], [hookpoint])[hookpoint]
      a = np.load(self._file(k, rel), mmap_mode="r")
      self._mmaps[key] = a.view(self.dtype) if self.manifest["dtype"] == "bfloat16" else a
    return self._mmaps[key]

  def chunk(self, hookpoint: str, k: int) -> np.ndarray:
    """The k-th chunk's activations for a hookpoint (memory-mapped)."""
    return self._chunk(hookpoint, k)

  def tokens(self, k: int) -> dict[str, np.ndarray]:
    rel = _chunk_files(self.chunks[k]["index"], [])["tokens"]
    with np.load(self._file(k, rel)) as z:
      return {n: z[n] for n in z.files}

  def get(self, hookpoint: str, idx) -> np.ndarray:
    """Activations of the tokens with these global indices, in the order given."""
    if hookpoint not in self.manifest["hookpoints"]:
      raise ConfigError(f"cache {self.path!r} has no hookpoint {hookpoint!r}")
    idx = np.asarray(idx, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= self.n_tokens):
      raise ConfigError(f"token index out of range [0, {self.n_tokens})")
    out = np.empty((idx.size, self.width(hookpoint)), self.dtype)
    which = np.searchsorted(self.offsets, idx, side="right") - 1
    for k in np.unique(which):
      sel = which == k
      out[sel] = self._chunk(hookpoint, int(k))[idx[sel] - self.offsets[k]]
    return out

  def token_info(self, idx) -> dict[str, np.ndarray]:
    """token_ids, doc_index, row, col of the tokens with these global indices."""
    idx = np.asarray(idx, np.int64)
    which = np.searchsorted(self.offsets, idx, side="right") - 1
    out: dict[str, np.ndarray] = {}
    for k in np.unique(which):
      sel = which == k
      t = self.tokens(int(k))
      for n, v in t.items():
        out.setdefault(n, np.empty(idx.size, v.dtype))[sel] = v[idx[sel] - self.offsets[k]]
    return out

  def process_range(self, process_index: int | None = None,
                    process_count: int | None = None) -> range:
    """The contiguous token indices this host reads in a multi-host run (near-equal parts)."""
    p = jax.process_index() if process_index is None else process_index
    c = jax.process_count() if process_count is None else process_count
    return range(self.n_tokens * p // c, self.n_tokens * (p + 1) // c)
