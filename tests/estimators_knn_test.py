"""Tests of jaxcode.estimators.knn: exact neighbours against scipy's cKDTree.

Reference: scipy.spatial.cKDTree.query (p=2 and p=inf), which we did not write.
Precision: neighbour distances are compared in float64 (jax.enable_x64 context) to 1e-12;
the float32 path is checked to 1e-6 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from jaxcode.estimators import knn as K
from jaxcode.errors import ConfigError
from jaxcode.parallel import make_mesh

SMALL = dict(query_block=32, ref_block=96, group=8)  # forces several query and ref blocks


def _ref(x, k, metric):
  d, i = cKDTree(x).query(x, k + 1, p=2 if metric == "euclidean" else np.inf)
  return d[:, 1:], i[:, 1:]


@pytest.mark.parametrize("metric, blocks", [("euclidean", {}), ("euclidean", SMALL),
                                             ("maxnorm", SMALL)])
def test_matches_ckdtree_float64(metric, blocks):
  x = np.random.default_rng(0).standard_normal((301, 6)) * 3.0 + 5.0
  with jax.enable_x64(True):
    nn = K.knn(x, 7, metric, **blocks)
    d_ref, i_ref = _ref(x, 7, metric)
    np.testing.assert_allclose(np.asarray(nn.dist_NK), d_ref, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(np.asarray(nn.idx_NK), i_ref)


def test_k_close_to_n():
  x = np.random.default_rng(2).standard_normal((12, 3))
  with jax.enable_x64(True):
    nn = K.knn(x, 11)
    d_ref, _ = _ref(x, 11, "euclidean")
    np.testing.assert_allclose(np.asarray(nn.dist_NK), d_ref, rtol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean"])
def test_sharded_equals_single_device_float32(metric):
  """8 fake devices, query blocks sharded over 'data', equal the single-device result;
  both equal cKDTree in float32 (JAX array input)."""
  x = np.random.default_rng(3).standard_normal((203, 5)).astype(np.float32)
  mesh = make_mesh()
  assert mesh.shape["data"] == 8
  one = K.knn(jnp.asarray(x), 4, metric, **SMALL)
  many = K.knn(x, 4, metric, mesh=mesh, **SMALL)
  np.testing.assert_allclose(np.asarray(many.dist_NK), np.asarray(one.dist_NK), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(many.idx_NK), np.asarray(one.idx_NK))
  d_ref, i_ref = _ref(x.astype(np.float64), 4, metric)
  np.testing.assert_allclose(np.asarray(one.dist_NK), d_ref, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(one.idx_NK), i_ref)


def test_duplicates_counted_dropped_or_refused():
  x = np.random.default_rng(4).standard_normal((40, 3))
  x = np.concatenate([x, x[:3], x[:1]])  # 4 repeated rows, 3 points with copies
  nn = K.knn(x, 2)
  assert K.n_zero_first(nn) == 7  # x[0] (twice repeated) x3, x[1] x2, x[2] x2
  assert K.drop_duplicates(x)[1] == 4
  with pytest.warns(UserWarning, match="dropped 4 duplicate rows"):
    nn2, n, dropped = K.knn_distinct(x, 2, "test")
  assert (n, dropped) == (40, 4) and K.n_zero_first(nn2) == 0
  with pytest.raises(ConfigError, match="4 duplicate rows"):
    K.knn_distinct(x, 2, "test", duplicates="error")


def test_memory_bounded_by_blocks():
  """Compiled buffers stay within the memory model and far below an N x N matrix."""
  n, d, k = 4000, 8, 5
  p = K.plan(n, k, d, query_block=64, ref_block=512)
  assert p.n_ref_blocks > 1
  x = jax.ShapeDtypeStruct((n, d), jnp.float32)
  mem = K.knn_program.lower(x, p=p, metric="euclidean", mesh=None).compile().memory_analysis()
  used = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
  assert used <= K.memory_bytes(p, d)["total"]
  assert mem.temp_size_in_bytes < n * n * 4 / 20
  big = K.largest_n(4 * 2**30, 64, 20)
  assert K.memory_bytes(K.plan(big, 20, 64), 64)["total"] <= 4 * 2**30
  assert K.memory_bytes(K.plan(big + 1, 20, 64), 64)["total"] > 4 * 2**30


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((5, 2)), k=5), "k=5 with N=5"),
    (dict(x=np.zeros((5, 2)), k=0), "k=0"),
    (dict(x=np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), k=1), "NaN or Inf"),
    (dict(x=np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), k=1), "NaN or Inf"),
    (dict(x=np.zeros(5), k=1), "expected a 2-D array"),
    (dict(x=np.zeros((1, 2)), k=1), "N >= 2"),
    (dict(x=np.random.default_rng(0).random((5, 2)), k=1, metric="cosine"), "metric='cosine'"),
])
def test_bad_input_one_line(bad, match):
  with pytest.raises(ConfigError, match=match) as e:
    K.knn(**bad)
  assert "\n" not in str(e.value)


def test_sharded_program_has_no_collective():
  """Each device works on its own query blocks: the compiled program moves no data."""
  mesh = make_mesh()
  p = K.plan(400, 3, 4, n_dev=8, query_block=16, ref_block=64)
  xa = K._layout(jnp.zeros((400, 4), jnp.float32), p, mesh)
  hlo = K._knn_impl.lower(xa, p=p, metric="euclidean", mesh=mesh).compile().as_text()
  for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
    assert op not in hlo


def test_self_never_returned_with_many_duplicates():
  """A point with more exact copies than k: every neighbour list excludes the point itself
  and the distances equal cKDTree's."""
  x = np.random.default_rng(6).standard_normal((40, 3))
  x = np.concatenate([x, np.repeat(x[:1], 5, axis=0)])
  with jax.enable_x64(True):
    nn = K.knn(x, 2)
  idx = np.asarray(nn.idx_NK)
  assert not np.any(idx == np.arange(len(x))[:, None])
  np.testing.assert_allclose(np.asarray(nn.dist_NK), _ref(x, 2, "euclidean")[0], atol=1e-12)
