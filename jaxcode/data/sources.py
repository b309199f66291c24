"""Activation sources for SAE training: batches as pure functions of (seed, step).

Implementations of one interface (``ActivationSource``); ``kind`` names each in results:

* ``ArraySource``     an in-memory array [N, D] (data.kind='array_npy': read from a .npy file);
* ``SyntheticSource`` a planted sparse dictionary (``jaxcode.data.synthetic``);
* ``ActivationCacheSource`` one hookpoint of the activation cache, the one on-disk format
                      (``jaxcode.data.activations.ActivationCache``; bf16 read as float32;
                      chunks are memory-mapped, so only the rows of a batch are read);
* ``LMSource``        one hookpoint computed on the fly by a language model over packed
                      token rows (no disk cache; a sweep of SAEs shares every forward).

For the stored sources, epoch e = (step * B) // N uses the permutation seeded by (seed, e), so
a resumed run reads exactly the rows the uninterrupted run would have read.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol

import numpy as np

from jaxcode.data.synthetic import PlantedDictionary
from jaxcode.errors import ConfigError

class ActivationSource(Protocol):
  d_in: int
  kind: str       # what results and exports record as the data ('synthetic', 'lm', ...)

  def batch(self, step: int, batch_size: int) -> np.ndarray:
    """Rows [batch_size, d_in] (float32) of training step `step`; pure in (seed, step)."""

  def sample(self, n: int, seed: int) -> np.ndarray:
    """n rows for estimation (normalisation, b_dec) or evaluation, pure in seed."""

  def batch_rows(self, step: int, batch_size: int, rows: slice) -> np.ndarray:
    """batch(step, batch_size)[rows]; the stored sources read only those rows (one host's
    share of a global batch on a multi-host run)."""


def _epoch_rows(n_rows: int, seed: int, step: int, batch_size: int) -> np.ndarray:
  """Row indices of batch `step`: consecutive slices of per-epoch permutations."""
  start = step * batch_size
  out = []
  while len(out) < batch_size:
    epoch, off = divmod(start, n_rows)
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n_rows)
    take = perm[off:off + batch_size - len(out)]
    out.extend(take.tolist())
    start += len(take)
  return np.asarray(out, np.int64)


class _StoredSource:
  """Batches, one host's rows of a batch, and samples of a source that reads rows by index:
  subclasses give `n_rows` and `rows_at(idx)`."""
  seed: int

  @property
  def n_rows(self) -> int:
    raise NotImplementedError

  def rows_at(self, idx) -> np.ndarray:
    raise NotImplementedError

  def batch(self, step, batch_size):
    return self.rows_at(_epoch_rows(self.n_rows, self.seed, step, batch_size))

  def batch_rows(self, step, batch_size, rows):
    return self.rows_at(_epoch_rows(self.n_rows, self.seed, step, batch_size)[rows])

  def sample(self, n, seed):
    rng = np.random.default_rng([int(seed), 0x5A])
    return self.rows_at(rng.choice(self.n_rows, size=min(n, self.n_rows), replace=False))


class ArraySource(_StoredSource):
  """Rows of an in-memory array [N, D] (float32)."""
  kind = "array"

  def __init__(self, x_ND: np.ndarray, seed: int = 0):
    x = np.asarray(x_ND, np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
      raise ConfigError(f"ArraySource: expected a non-empty [N, D] array, got shape {x.shape}")
    self.x_ND, self.seed, self.d_in = x, int(seed), x.shape[1]

  @property
  def n_rows(self):
    return len(self.x_ND)

  def rows_at(self, idx):
    return self.x_ND[idx]


class SyntheticSource:
  """Planted-dictionary activations; `planted` holds the ground truth."""
  kind = "synthetic"

  def __init__(self, planted: PlantedDictionary, seed: int = 0):
    self.planted, self.seed, self.d_in = planted, int(seed), planted.d_in

  def batch(self, step, batch_size):
    return self.planted.batch(self.seed, step, batch_size)

  def batch_rows(self, step, batch_size, rows):   # generated whole (cheap), then sliced
    return self.batch(step, batch_size)[rows]

  def sample(self, n, seed):
    return self.planted.batch(self.seed + 1_000_003, 10_000_000 + int(seed), n)


class ActivationCacheSource(_StoredSource):
  """Rows of one hookpoint of a complete activation cache, drawn across its chunks; read
  through ActivationCache.get, so each chunk file is checked against the manifest's sha256
  on its first read (a corrupt or truncated one is a ConfigError naming it)."""
  kind = "activation_cache"

  def __init__(self, path: str, hookpoint: str, seed: int = 0):
    from jaxcode.data.activations import ActivationCache
    hooks = [hookpoint] if hookpoint else None
    self.cache = ActivationCache.open(path, hookpoints=hooks)
    if not hookpoint:
      if len(self.cache.hookpoints) != 1:
        raise ConfigError(f"cache {path!r} has hookpoints {self.cache.hookpoints}: "
                          "set data.hookpoint to one of them")
      hookpoint = self.cache.hookpoints[0]
    self.hookpoint, self.seed = hookpoint, int(seed)
    self.d_in = self.cache.width(hookpoint)
    if self.cache.n_tokens == 0:
      raise ConfigError(f"cache {path!r} holds no tokens")

  def rows_at(self, idx):
    return np.asarray(self.cache.get(self.hookpoint, idx), np.float32)

  @property
  def n_rows(self):
    return self.cache.n_tokens


class LMSource:
  """Activations of one hookpoint computed on the fly by a language model (no cache on disk).

  Each batch runs the model over rows of packed token ids (`input_ids` [N, T], `attention_mask`
  [N, T]; rows drawn as consecutive slices of per-epoch permutations, so a batch is a pure
  function of (seed, step)), keeps the positions the mask marks valid and takes batch_size of
  them in a seeded random order.  Rows go through the model `rows_per_forward` at a time (one
  compiled shape); a batch needs ceil(batch_size / T) rows when every position is valid, more
  when rows are padded.  A sweep of SAEs trained at once shares each forward pass.
  """
  kind = "lm"

  def __init__(self, lm, input_ids, attention_mask=None, hookpoint: str = "", seed: int = 0,
               rows_per_forward: int = 0):
    ids = np.asarray(input_ids, np.int32)
    if ids.ndim != 2 or ids.shape[0] == 0:
      raise ConfigError(f"LMSource: expected non-empty token ids [N, T], got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
      raise ConfigError(f"LMSource: attention_mask shape {mask.shape} != ids shape {ids.shape}")
    if int(mask.sum()) == 0:
      raise ConfigError("LMSource: the attention mask marks no valid token")
    lm.forward_fn((hookpoint,))        # unknown hookpoints fail here, before any compute
    self.lm, self.ids, self.mask, self.hookpoint = lm, ids, mask, hookpoint
    self.seed, self.rows_per_forward = int(seed), int(rows_per_forward)
    self.d_in = int(lm.hookpoint_width(hookpoint))

  def _forward(self, rows: np.ndarray) -> np.ndarray:
    out = self.lm.apply(self.ids[rows], self.mask[rows], (self.hookpoint,))[self.hookpoint]
    keep = self.mask[rows].reshape(-1).astype(bool)
    return np.asarray(out, np.float32).reshape(-1, self.d_in)[keep]

  def _tokens(self, rng_key, row_stream, batch_size: int) -> np.ndarray:
    n, t = self.ids.shape
    r = self.rows_per_forward or -(-batch_size // t)
    got, have, i = [], 0, 0
    while have < batch_size:
      rows = row_stream(i, r)
      got.append(self._forward(rows))
      have += len(got[-1])
      i += 1
    acts = np.concatenate(got)
    pick = np.random.default_rng(rng_key).permutation(len(acts))[:batch_size]
    return acts[pick]

  def batch(self, step, batch_size):
    n = self.ids.shape[0]
    def stream(i, r):   # the epoch-permutation slice of this step, then seeded extra rows
      if i == 0:
        return _epoch_rows(n, self.seed, step, r)
      return np.random.default_rng([self.seed, int(step), i]).integers(0, n, r)
    return self._tokens([self.seed, int(step), 0x1A], stream, batch_size)

  def batch_rows(self, step, batch_size, rows):
    """Computed whole on every host, then sliced: the token choice follows the forward."""
    return self.batch(step, batch_size)[rows]

  def sample(self, n, seed):
    rows_n = self.ids.shape[0]
    stream = lambda i, r: np.random.default_rng([int(seed), 0x5A, i]).integers(0, rows_n, r)
    return self._tokens([int(seed), 0x5B], stream, n)


KINDS = ("synthetic", "array_npy", "activation_cache", "lm")


def _read_npy(path: str) -> np.ndarray:
  """data.kind='array_npy': a numeric [N, D] array in a .npy file (never unpickled)."""
  what = "expected a .npy file holding a numeric [N, D] array of activations"
  if not path or not os.path.isfile(path):
    raise ConfigError(f"data.path={path!r}: {'no such file' if path else 'empty'}: {what}")
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    why = "pickled data, never loaded" if "pickle" in str(e) else " ".join(str(e).split())
    raise ConfigError(f"data.path={path!r}: not a .npy array ({why}): {what}") from None
  if not isinstance(x, np.ndarray):   # an .npz archive
    x.close()
    raise ConfigError(f"data.path={path!r}: an .npz archive: {what}")
  if x.dtype.kind not in "fiu" or x.ndim != 2 or 0 in x.shape:
    raise ConfigError(f"data.path={path!r}: a {x.dtype} array of shape {x.shape}: {what}")
  return x


def from_config(cfg, load_lm: Callable | None = None) -> ActivationSource:
  """Source from a config with `kind` in KINDS and its fields (path, hookpoint, seed ...);
  kind 'lm' loads the model `path` with `load_lm(path)` (default: a local directory or Hub
  id through jaxcode.models.lm.load_pretrained; the experiments pass the pipeline's loader,
  which also knows the model aliases)."""
  kind = cfg.kind
  if kind == "synthetic":
    return SyntheticSource(PlantedDictionary(
        d_in=int(cfg.d_in), n_features=int(cfg.n_features), l0=float(cfg.l0),
        alpha=float(cfg.alpha), seed=int(cfg.dict_seed)), seed=int(cfg.seed))
  if kind == "array_npy":
    return ArraySource(_read_npy(str(cfg.path)), seed=int(cfg.seed))
  if kind == "activation_cache":
    return ActivationCacheSource(cfg.path, cfg.get("hookpoint", ""), seed=int(cfg.seed))
  if kind == "lm":
    return lm_source_from_config(cfg, load_lm)
  raise ConfigError(f"data.kind={kind!r}: expected one of {KINDS}")


def lm_source_from_config(cfg, load_lm: Callable | None = None) -> LMSource:
  """data.kind='lm': model `path` (directory or Hub id), `hookpoint`, `corpus` ('' = the
  embedded default corpus, else a corpus spec for jaxcode.data.corpus.load_corpus) packed
  into rows of `seq_len` tokens."""
  from jaxcode.data import corpus as corpus_lib
  if not cfg.get("path", ""):
    raise ConfigError("data.kind='lm' needs data.path: a model directory or Hub id")
  if not cfg.get("hookpoint", ""):
    raise ConfigError("data.kind='lm' needs data.hookpoint, e.g. blocks.6.resid_post")
  seq_len = int(cfg.get("seq_len", 128))
  if seq_len < 2:
    raise ConfigError(f"data.seq_len={seq_len}: expected at least 2")
  if load_lm is None:
    from jaxcode.models.lm import load_pretrained as load_lm
  lm = load_lm(cfg.path)
  spec = cfg.get("corpus", "")
  docs = corpus_lib.load_corpus(spec) if spec else corpus_lib.default_corpus()
  packed = corpus_lib.pack(docs, lm.tokenizer, seq_len)
  return LMSource(lm, packed.input_ids, packed.attention_mask, cfg.hookpoint, seed=int(cfg.seed))
