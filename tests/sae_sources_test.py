"""Activation sources and the planted dictionary.

References: the planted dictionary's own analytic moments (expected L0 = sum of feature
probabilities, power-law exponent recovered by scipy.stats.linregress on log-log frequencies),
numpy permutations for epoch coverage, and the activation cache's reader
(jaxcode.data.activations, written by another helper) for the cache-backed source.
"""

import json
import os

import numpy as np
import pytest
from scipy.stats import linregress

from jaxcode.data import activations, sources
from jaxcode.data.synthetic import PlantedDictionary
from jaxcode.errors import ConfigError


def _cache_of(path, x_ND, tokens_per_chunk, hook="h"):
  """An activation cache holding x_ND for one hookpoint (the one on-disk format)."""
  activations.write_arrays(str(path), {hook: x_ND}, tokens_per_chunk)
  return str(path)


def test_array_and_cache_sources_agree_and_cover_epochs(tmp_path):
  x = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
  arr = sources.ArraySource(x, seed=3)
  chk = sources.ActivationCacheSource(_cache_of(tmp_path / "cache", x, 25), "", seed=3)
  assert chk.d_in == 5 and [e["n_tokens"] for e in chk.cache.chunks] == [25, 25, 10]
  seen = np.concatenate([arr.batch(s, 12) for s in range(5)])     # exactly one epoch
  assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, x.tolist()))
  for s in (0, 4, 5, 17):                                         # crosses epoch boundaries
    np.testing.assert_array_equal(chk.batch(s, 12), arr.batch(s, 12))
    np.testing.assert_array_equal(arr.batch(s, 12), arr.batch(s, 12))   # pure in (seed, step)
  assert not np.array_equal(sources.ArraySource(x, seed=4).batch(0, 12), arr.batch(0, 12))
  np.testing.assert_array_equal(chk.sample(10, 1), arr.sample(10, 1))


def test_activation_cache_source(tmp_path):
  x = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
  hook = "blocks.1.hook_resid_post"
  os.makedirs(tmp_path / hook)
  np.save(tmp_path / hook / "chunk_00000.npy", x[:20])
  np.save(tmp_path / hook / "chunk_00001.npy", x[20:])
  digest = lambda i: {f"{hook}/chunk_{i:05d}.npy": activations.sha256_file(
      str(tmp_path / hook / f"chunk_{i:05d}.npy"))}   # the reader checks each file it reads
  man = {"model": "m", "hookpoints": [hook], "widths": {hook: 4}, "dtype": "float32",
         "complete": True, "chunks": [{"index": 0, "n_tokens": 20, "sha256": digest(0)},
                                      {"index": 1, "n_tokens": 10, "sha256": digest(1)}]}
  (tmp_path / "manifest.json").write_text(json.dumps(man))
  src = sources.ActivationCacheSource(str(tmp_path), "", seed=2)
  ref = sources.ArraySource(x, seed=2)
  assert src.d_in == 4
  for s in (0, 3, 7):
    np.testing.assert_array_equal(src.batch(s, 8), ref.batch(s, 8))


def test_planted_dictionary_statistics():
  pd = PlantedDictionary(d_in=16, n_features=200, l0=5.0, alpha=0.8, seed=0)
  d = pd.dictionary
  np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(pd.probabilities.sum(), 5.0, rtol=1e-6)
  codes = np.concatenate([pd.codes(0, s, 2000) for s in range(5)])
  l0 = (codes > 0).sum(1)
  assert abs(l0.mean() - 5.0) < 4 * l0.std() / np.sqrt(len(l0))
  freq = (codes > 0).mean(0)
  fit = linregress(np.log(np.arange(1, 201)[freq > 0]), np.log(freq[freq > 0]))
  assert abs(fit.slope + 0.8) < 0.1
  np.testing.assert_allclose(pd.batch(0, 3, 7), pd.codes(0, 3, 7) @ d, rtol=1e-5)


def test_source_errors(tmp_path):
  with pytest.raises(ConfigError, match="no manifest.json"):
    sources.ActivationCacheSource(str(tmp_path), "")
  with pytest.raises(ConfigError, match="expected a non-empty"):
    sources.ArraySource(np.zeros((0, 3)))
  with pytest.raises(ConfigError, match="l0=0"):
    PlantedDictionary(d_in=4, n_features=8, l0=0)


@pytest.mark.parametrize("fixture", ["gpt2", "bert"])
def test_lm_source_matches_the_model(fixture):
  """LMSource rows are the model's own activations (lm.apply on the same rows, the reference
  being our HF-parity-tested forward) at valid positions only; pure in (seed, step)."""
  from jaxcode.models.lm import load_pretrained
  lm = load_pretrained(os.path.join(os.path.dirname(__file__), "fixtures", "lm", fixture))
  rng = np.random.default_rng(0)
  ids = rng.integers(5, lm.module.vocab, (12, 8)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[::2, 5:] = 0                                  # padded rows (BERT-style packing)
  hook = "blocks.1.resid_post"
  src = sources.LMSource(lm, ids, mask, hook, seed=3)
  assert src.d_in == lm.d_model
  full = np.asarray(lm.apply(ids, mask, (hook,))[hook], np.float32)
  valid = full[mask.astype(bool)]                    # one reference row per valid position
  b = src.batch(2, 20)                               # needs more than ceil(20 / 8) rows
  assert b.shape == (20, lm.d_model)
  # Each row is the activation of some valid position. The source runs other rows per
  # forward than the reference (other shapes, so possibly other XLA kernels): match each row
  # to its nearest reference row and require float32 rounding distance (1e-5 of the row
  # norms, ~10), far below the distance (> 1) to a padded position's or another row's.
  dist = np.linalg.norm(b[:, None, :] - valid[None, :, :], axis=-1)
  tol = 1e-5 * np.linalg.norm(valid, axis=1).max()
  assert dist.min(1).max() <= tol, (dist.min(1).max(), tol)
  np.testing.assert_array_equal(b, src.batch(2, 20))
  assert not np.array_equal(b, src.batch(3, 20))
  assert src.sample(7, 0).shape == (7, lm.d_model)
  with pytest.raises(ConfigError, match="blocks.9"):
    sources.LMSource(lm, ids, mask, "blocks.9.resid_post")


def test_batch_rows_is_a_slice_of_the_batch(tmp_path):
  """One host's rows of a global batch (what a multi-host run reads) equal the same rows of
  the whole batch, for every source kind; the stored ones read only those rows."""
  x = np.random.default_rng(7).standard_normal((50, 6)).astype(np.float32)
  store = _cache_of(tmp_path / "cache", x, 20)
  srcs = [sources.ArraySource(x, seed=1), sources.ActivationCacheSource(store, "h", seed=1),
          sources.SyntheticSource(PlantedDictionary(d_in=6, n_features=9, l0=2.0, alpha=0.3,
                                                    seed=0), seed=1)]
  for src in srcs:
    for step in (0, 3, 9):
      full = src.batch(step, 16)
      for rows in (slice(0, 8), slice(8, 16), slice(4, 12)):
        np.testing.assert_array_equal(src.batch_rows(step, 16, rows), full[rows])
  read = []
  chk = srcs[1]
  orig = chk.rows_at
  chk.rows_at = lambda idx: (read.append(len(idx)), orig(idx))[1]
  chk.batch_rows(2, 16, slice(8, 16))
  assert read == [8]


def test_write_arrays_round_trips_float16_and_bfloat16(tmp_path):
  """A cache written from arrays reads back exactly (bfloat16 stored as its bits), every
  file with its sha256 recorded, and is refused where it does not fit the reader's checks."""
  import ml_dtypes
  x = np.random.default_rng(2).standard_normal((13, 3))
  for dt in (np.float16, ml_dtypes.bfloat16):
    d = str(tmp_path / np.dtype(dt).name)
    activations.write_arrays(d, {"a": x.astype(dt), "b": (2 * x).astype(dt)}, 5)
    cache = activations.ActivationCache.open(d)
    assert cache.verify() == [] and cache.n_tokens == 13 and cache.dtype == dt
    np.testing.assert_array_equal(cache.get("b", np.arange(13)), (2 * x).astype(dt))
    assert cache.token_info([12])["row"].tolist() == [12]
  with pytest.raises(ConfigError, match="one row count"):
    activations.write_arrays(str(tmp_path / "bad"), {"a": x, "b": x[:5]}, 5)
