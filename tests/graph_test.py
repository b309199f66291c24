"""Tests of jaxcode.estimators.graph: layered min-plus shortest paths and ball counts.

References we did not write: scipy.sparse.csgraph.dijkstra (distances), NumPy counting
of scipy's distances (ball counts), NumPy's 1/|w| (edge lengths).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scipy.sparse as sp
from scipy.sparse import csgraph

from jaxcode import parallel
from jaxcode.errors import ConfigError
from jaxcode.estimators import graph, networks


def _random_kernels(seed=0, widths=(7, 12, 9, 11, 8, 10), density=0.5):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(a, b)) * (rng.random((a, b)) < density)
          for a, b in zip(widths[:-1], widths[1:])]


def _numpy_counts(d, radii):
  return (d[:, :, None] <= np.asarray(radii)[None, None]).sum(1)


@pytest.mark.parametrize("directed", [True, False])
def test_layered_distances_equal_scipy_dijkstra(directed):
  """Multi-hop lam*sum|w|^p + gamma*hops equals scipy's Dijkstra exactly (directed DAG
  and undirected zig-zag paths), on a random sparse layered network."""
  with jax.enable_x64(True):
    lengths, mask = graph.layered_from_kernels(_random_kernels(), p=-1.0, lam=1.3, gamma=0.5,
                                               dtype=jnp.float64)
    src = np.nonzero(np.asarray(mask).ravel())[0]
    d = np.asarray(graph.layered_distances(lengths, src, directed)).reshape(len(src), -1)
  ref = csgraph.dijkstra(graph.layered_to_sparse(lengths, mask), directed=directed, indices=src)
  m = np.asarray(mask).ravel()
  np.testing.assert_array_equal(d[:, m], ref[:, m])
  if not directed:   # zig-zag paths exist: some undirected distance beats every forward one
    assert np.isfinite(ref[:, m]).sum() > np.isfinite(
        csgraph.dijkstra(graph.layered_to_sparse(lengths, mask), directed=True,
                         indices=src)[:, m]).sum()


def test_edge_lengths_match_numpy():
  """p = -1 lengths are bit-equal to NumPy's lam/|w| + gamma; zeros are missing edges."""
  w = np.random.default_rng(1).normal(size=(5, 6))
  w[0, 0] = 0.0
  with jax.enable_x64(True):
    got = np.asarray(graph.edge_lengths(w, -1.0, 2.0, 0.25))
    got_p = np.asarray(graph.edge_lengths(w, 0.5))
  ref = 2.0 * (1.0 / np.abs(np.where(w == 0, 1, w))) + 0.25
  ref[0, 0] = np.inf
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_allclose(got_p[1:], np.abs(w[1:]) ** 0.5, rtol=1e-14)


@pytest.mark.parametrize("directed", [False, True])
def test_layered_ball_counts_sharded_equal_single_device_and_scipy(directed):
  """Streamed ball counts over 8 devices == one device == NumPy counts of Dijkstra
  (sources in shuffled order: blocks are layer-sorted inside and put back)."""
  m = None
  with jax.enable_x64(True):
    lengths, mask = graph.layered_from_kernels(_random_kernels(2), dtype=jnp.float64)
    m = np.asarray(mask).ravel()
    src = np.random.default_rng(0).permutation(np.nonzero(m)[0])
    radii = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    one = graph.layered_ball_counts(lengths, mask, radii, src, directed=directed, block=4,
                                    mesh=parallel.single_device_mesh())
    eight = graph.layered_ball_counts(lengths, mask, radii, src, directed=directed, block=4,
                                      mesh=parallel.make_mesh(8, 1))
  np.testing.assert_array_equal(one, eight)
  ref = csgraph.dijkstra(graph.layered_to_sparse(lengths, mask), directed=directed, indices=src)
  np.testing.assert_array_equal(one, _numpy_counts(ref[:, m], radii))


def test_chunked_minplus_equals_unchunked():
  rng = np.random.default_rng(3)
  a, b = rng.random((5, 16)), rng.random((16, 7))
  ref = (a[:, :, None] + b[None]).min(1)
  np.testing.assert_allclose(np.asarray(graph.minplus(jnp.asarray(a), jnp.asarray(b), chunk=4)),
                             ref, rtol=1e-6)


def test_sparse_ball_counts_match_scipy():
  """Truncated-Dijkstra + JAX histogram == NumPy counts of full BFS distances."""
  a = networks.uv_flower(2, 2, 3)
  radii = np.arange(1.0, 9.0)
  got = graph.sparse_ball_counts(a, radii, np.arange(a.shape[0]), block=7)
  ref = _numpy_counts(csgraph.shortest_path(a, unweighted=True), radii)
  np.testing.assert_array_equal(got, ref)


def test_sparse_ball_counts_jax_bellman_ford_sharded_equals_scipy():
  """Device Bellman-Ford counts (1 and 8 devices) == NumPy counts of scipy Dijkstra,
  on a weighted graph (random positive lengths on a (2,2)-flower)."""
  a = networks.uv_flower(2, 2, 3).tocoo()
  w = np.random.default_rng(5).uniform(0.5, 2.0, a.nnz)
  a = sp.csr_matrix((w, (a.row, a.col)), shape=a.shape)
  radii = np.array([0.7, 1.5, 3.0, 6.0])
  centres = np.arange(0, a.shape[0], 3)
  with jax.enable_x64(True):
    one = graph.sparse_ball_counts(a, radii, centres, block=4, method="jax",
                                   directed=True, mesh=parallel.single_device_mesh())
    eight = graph.sparse_ball_counts(a, radii, centres, block=4, method="jax",
                                     directed=True, mesh=parallel.make_mesh(8, 1))
  ref = _numpy_counts(csgraph.dijkstra(a, directed=True, indices=centres), radii)
  np.testing.assert_array_equal(one, ref)
  np.testing.assert_array_equal(eight, ref)


def test_one_hop_histograms_bin_like_numpy_round():
  d = np.array([[0.5, 1.0, 1.5, 2.5, 3.49, 150.0, 150.2, np.inf]])
  h = np.asarray(graph.one_hop_histograms(jnp.asarray(d), 150))
  ref = np.zeros(151, int)
  for x in d[0]:
    if 1 < x <= 150:
      ref[int(np.round(x))] += 1
  np.testing.assert_array_equal(h[0], ref)


def test_bad_inputs_raise_one_line():
  lengths, mask = graph.layered_from_kernels(_random_kernels())
  with pytest.raises(ConfigError, match="radii"):
    graph.layered_ball_counts(lengths, mask, [])
  with pytest.raises(ConfigError, match="do not chain"):
    graph.layered_from_kernels([np.ones((3, 4)), np.ones((5, 2))])
  with pytest.raises(ConfigError, match="scipy.sparse"):
    graph.sparse_ball_counts(np.ones((3, 3)), [1.0, 2.0], [0])
