"""The toy-model data sampler, checked against scipy's distribution tests."""

import jax
import numpy as np
import scipy.stats

from jaxcode.data import sparse_features as sf


def test_hash_uniform_passes_kolmogorov_smirnov_and_is_decorrelated():
  u = np.asarray(sf.hash_uniform(jax.random.key(3), (200, 500))).ravel()
  assert u.min() >= 0.0 and u.max() < 1.0
  assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
  # neighbouring indices (the counter) are not correlated
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
  v = np.asarray(sf.hash_uniform(jax.random.key(4), (200, 500))).ravel()
  assert abs(np.corrcoef(u, v)[0, 1]) < 0.01   # another key, another stream


def test_sparse_sample_distribution():
  x = np.asarray(sf.sample(jax.random.key(0), 20000, 10, 0.7)).ravel()
  zero = x == 0
  assert abs(zero.mean() - 0.7) < 0.005
  assert scipy.stats.kstest(x[~zero], "uniform").pvalue > 1e-3


def test_values_do_not_depend_on_sharding():
  from jaxcode import parallel
  mesh = parallel.make_mesh(1, 8)
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model", None, None))
  ids = np.arange(8, dtype=np.int32)
  s = np.linspace(0.1, 0.9, 8).astype(np.float32)
  f = lambda k: jax.lax.with_sharding_constraint(sf.sample_instances(k, ids, 64, 16, s), sh)
  a = jax.jit(f)(jax.random.key(1))
  b = sf.sample_instances(jax.random.key(1), ids, 64, 16, s)
  assert len(a.sharding.device_set) == 8
  # One jitted program sharded over 8 devices against op-by-op on one: the same elementwise
  # arithmetic, but other programs may round differently, so a tolerance of ~16 float32
  # ulps on [0, 1) (spacing <= 6e-8); a sharding-dependent stream would differ by O(0.1).
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  assert np.mean(np.asarray(b) > 0) > 0.3         # not trivially all zeros
