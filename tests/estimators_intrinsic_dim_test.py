"""Tests of jaxcode.estimators.intrinsic_dim against scikit-dimension 0.5 (which we did not
write): skdim.id.TwoNN (method 'linear' and 'mle'), skdim.id.MLE (comb='mle') and
skdim.id.lPCA(ver='participation_ratio'), equal to 1e-6 relative on the same data. Our side
runs in float64 (jax.enable_x64), as skdim does.
"""

import warnings

import jax
import numpy as np
import pytest
import skdim

from jaxcode.estimators import intrinsic_dim as I
from jaxcode.errors import ConfigError
from jaxcode.parallel import make_mesh


def _ball(n, d, ambient, seed=0):
  """Points uniform in a d-ball, rotated into `ambient` dimensions, with small noise."""
  rng = np.random.default_rng(seed)
  x = skdim.datasets.hyperBall(n=n, d=d, radius=1, random_state=seed)
  rot, _ = np.linalg.qr(rng.standard_normal((ambient, ambient)))
  x = np.concatenate([x, np.zeros((n, ambient - d))], axis=1) @ rot
  return x + 1e-3 * rng.standard_normal(x.shape)


# ambient 8 takes skdim's NearestNeighbors path, ambient 30 its chunked distance-matrix path.
DATA = {"d8": _ball(400, 4, 8, 0), "d30": _ball(400, 6, 30, 1)}


@pytest.mark.parametrize("name", sorted(DATA))
@pytest.mark.parametrize("method", ["linear", "mle"])
def test_twonn_equals_skdim(name, method):
  x = DATA[name]
  for f in ((0.1, 0.0) if method == "mle" else (0.1, 0.3)):
    ref = skdim.id.TwoNN(discard_fraction=f, method=method).fit(x).dimension_
    with jax.enable_x64(True):
      got = I.twonn(x, discard_fraction=f, method=method)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(DATA))
def test_mle_equals_skdim(name):
  x = DATA[name]
  for k, unbiased in ((20, False),) + (((5, True),) if name == "d8" else ()):
    ref = skdim.id.MLE(unbiased=unbiased).fit(x, n_neighbors=k, comb="mle").dimension_
    with jax.enable_x64(True):
      got = I.mle(x, k=k, unbiased=unbiased)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(DATA))
def test_participation_ratio_equals_skdim(name):
  x = DATA[name]
  ref = skdim.id.lPCA(ver="participation_ratio").fit(x).dimension_
  with jax.enable_x64(True):
    got = I.participation_ratio(x)
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_mle_range_equals_mean_of_skdim():
  x = DATA["d8"]
  ref = np.mean([skdim.id.MLE().fit(x, n_neighbors=k).dimension_ for k in (18, 19, 20)])
  with jax.enable_x64(True):
    np.testing.assert_allclose(I.mle_range(x, 18, 20), ref, rtol=1e-6)


def test_sharded_equals_single_device_float32():
  """8 fake devices against one; float32 JAX input; the public API returns Python floats."""
  x = jax.numpy.asarray(DATA["d8"], dtype=np.float32)
  mesh = make_mesh()
  one = (I.twonn(x), I.mle(x), I.participation_ratio(x))
  many = (I.twonn(x, mesh=mesh), I.mle(x, mesh=mesh), I.participation_ratio(x, mesh=mesh))
  np.testing.assert_allclose(many, one, rtol=1e-5)
  for v in one:
    assert type(v) is float and 2.0 < v < 8.0


def test_duplicates_dropped_with_warning():
  x = DATA["d8"]
  xd = np.concatenate([x, x[:7]])
  with jax.enable_x64(True):
    with pytest.warns(UserWarning, match="dropped 7 duplicate rows"):
      got = I.twonn(xd)
    np.testing.assert_allclose(got, I.twonn(x), rtol=1e-12)
    with pytest.raises(ConfigError, match="7 duplicate rows"):
      I.twonn(xd, duplicates="error")


@pytest.mark.parametrize("fn, kwargs, match", [
    (I.twonn, dict(x=np.eye(2)), "N=2 points"),
    (I.twonn, dict(x=np.eye(3), discard_fraction=1.0), "discard_fraction=1.0"),
    (I.twonn, dict(x=np.eye(4), discard_fraction=0.9), "keeps 0 ratios"),
    (I.twonn, dict(x=np.eye(4), method="ols"), "method='ols'"),
    (I.twonn, dict(x=np.eye(4), discard_fraction=0.0), "keeps every ratio"),
    (I.mle, dict(x=np.eye(5), k=5), "k=5 with N=5"),
    (I.mle, dict(x=np.eye(5), k=1), "k=1"),
    (I.mle, dict(x=np.full((5, 2), np.inf)), "NaN or Inf"),
    (I.participation_ratio, dict(x=np.array([[1.0, np.nan], [0.0, 1.0]])), "NaN or Inf"),
    (I.participation_ratio, dict(x=np.ones((4, 3))), "zero variance"),
    (I.participation_ratio, dict(x=np.ones((1, 3))), "N >= 2"),
])
def test_bad_input_one_line(fn, kwargs, match):
  with pytest.raises(ConfigError, match=match) as e:
    fn(**kwargs)
  assert "\n" not in str(e.value)
