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

  def __init__(self, path: str, hookpoint: str | tuple = "", seed: int = 0):
    from jaxcode.data.activations import ActivationCache
    hooks = list(hookpoint) if isinstance(hookpoint, (tuple, list)) else (
        [hookpoint] if hookpoint else None)
    self.cache = ActivationCache.open(path, hookpoints=hooks)
    if not hooks:
      if len(self.cache.hookpoints) != 1:
        raise ConfigError(f"cache {path!r} has hookpoints {self.cache.hookpoints}: "
                          "set data.hookpoint to one of them")
      hooks = [self.cache.hookpoints[0]]
    # several hookpoints: each row is their concatenation, in this order (PairedSource)
    self.hookpoints = tuple(hooks)
    self.hookpoint = hooks[0] if len(hooks) == 1 else self.hookpoints
    self.seed = int(seed)
    self.d_in = sum(self.cache.width(h) for h in self.hookpoints)
    if self.cache.n_tokens == 0:
      raise ConfigError(f"cache {path!r} holds no tokens")

  def rows_at(self, idx):
    parts = [np.asarray(self.cache.get(h, idx), np.float32) for h in self.hookpoints]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

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
    hooks = tuple(hookpoint) if isinstance(hookpoint, (tuple, list)) else (hookpoint,)
    lm.forward_fn(hooks)               # unknown hookpoints fail here, before any compute
    self.lm, self.ids, self.mask, self.hookpoints = lm, ids, mask, hooks
    # several hookpoints (one forward): each row is their concatenation (PairedSource)
    self.hookpoint = hooks[0] if len(hooks) == 1 else hooks
    self.seed, self.rows_per_forward = int(seed), int(rows_per_forward)
    self.d_in = sum(int(lm.hookpoint_width(h)) for h in hooks)

  def _forward(self, rows: np.ndarray) -> np.ndarray:
    out = self.lm.apply(self.ids[rows], self.mask[rows], self.hookpoints)
    keep = self.mask[rows].reshape(-1).astype(bool)
    parts = [np.asarray(out[h], np.float32).reshape(keep.size, -1)[keep]
             for h in self.hookpoints]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

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


class PairedSource:
  """Input/output pairs of L layers for transcoders: batch(step) -> {'x': [B, L, d_in],
  'y': [B, L, d_out]} (a CLT reads all layers; a per-layer set reads layer j of it).

  Built over a flat source whose rows are the concatenation of the L input hookpoints then
  the L output hookpoints (ActivationCacheSource or LMSource given that hookpoint list: one
  cache read or one model forward gives every layer's pair), or over a PlantedTranscoder
  (`planted`, the ground truth).  Pure in (seed, step) as its flat source is.
  """

  def __init__(self, flat=None, n_layers: int = 1, d_in: int = 0, d_out: int = 0,
               planted=None, seed: int = 0, hooks: tuple = ()):
    self.flat, self.planted, self.seed, self.hooks = flat, planted, int(seed), tuple(hooks)
    if planted is not None:
      n_layers, d_in, d_out = planted.n_layers, planted.d_in, planted.d_out
    self.n_layers, self.d_in, self.d_out = int(n_layers), int(d_in), int(d_out)
    self.kind = "synthetic" if planted is not None else flat.kind
    for name in ("cache", "lm", "ids"):
      if flat is not None and hasattr(flat, name):
        setattr(self, name, getattr(flat, name))

  def _split(self, rows: np.ndarray) -> dict:
    L, a = self.n_layers, self.n_layers * self.d_in
    return {"x": rows[:, :a].reshape(-1, L, self.d_in),
            "y": rows[:, a:].reshape(-1, L, self.d_out)}

  def batch(self, step, batch_size):
    if self.planted is not None:
      return self.planted.batch(self.seed, step, batch_size)
    return self._split(self.flat.batch(step, batch_size))

  def batch_rows(self, step, batch_size, rows):
    if self.planted is not None:
      return {k: v[rows] for k, v in self.batch(step, batch_size).items()}
    return self._split(self.flat.batch_rows(step, batch_size, rows))

  def sample(self, n, seed):
    if self.planted is not None:
      return self.planted.batch(self.seed + 1_000_003, 10_000_000 + int(seed), n)
    return self._split(self.flat.sample(n, seed))


def paired_hookpoints(layers, hook_in: str, hook_out: str) -> tuple[str, ...]:
  """The flat source's hookpoint order: every layer's input, then every layer's output."""
  return (tuple(hook_in.format(layer=l) for l in layers)
          + tuple(hook_out.format(layer=l) for l in layers))
