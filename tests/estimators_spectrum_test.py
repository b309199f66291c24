"""Tests of jaxcode.estimators.spectrum.

References we did not write: numpy.cov (covariance), scipy.stats.linregress (OLS slope and
R^2), numpy.polyfit with weights (the rank-weighted fit of Stringer et al. 2019), and the
analytic exponent of synthetic spectra. float64 via jax.enable_x64 where 1e-10 is asserted.
"""

import jax
import numpy as np
import pytest
from scipy import stats

from jaxcode.estimators import spectrum as S
from jaxcode.errors import ConfigError
from jaxcode.parallel import make_mesh


def test_covariance_equals_numpy_blocked():
  x = np.random.default_rng(0).standard_normal((1001, 7)) * 3 + 10
  with jax.enable_x64(True):
    got = np.asarray(S.covariance(x, block=64))
  np.testing.assert_allclose(got, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_covariance_sharded_equals_single_device():
  x = np.random.default_rng(1).standard_normal((999, 6)).astype(np.float32)
  one = np.asarray(S.covariance(x, block=32))
  many = np.asarray(S.covariance(x, mesh=make_mesh(), block=32))
  np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighting", ["ols", "rank"])
def test_slope_of_sampled_power_law_within_001(weighting):
  """Data with covariance spectrum n^-1.2 (d = 64, N = 20000, random rotation): the slope
  of the sample covariance eigenvalues over ranks 2..32 is -1.2 within 0.01."""
  rng = np.random.default_rng(2)
  d = 64
  lam = np.arange(1, d + 1) ** -1.2
  rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
  x = (rng.standard_normal((20000, d)) * np.sqrt(lam)) @ rot.T
  with jax.enable_x64(True):
    eig = np.asarray(S.eigenvalues(x, block=4096))
  fit = S.powerlaw_fit(eig, 2, 32, weighting)
  assert abs(fit["slope"] + 1.2) < 0.01, fit
  assert fit["r2"] > 0.99


def test_exact_power_law():
  lam = 3.0 * np.arange(1, 101) ** -0.8
  fit = S.powerlaw_fit(lam[::-1], 5, 60)  # order does not matter: ranks come from sorting
  np.testing.assert_allclose(fit["slope"], -0.8, rtol=1e-12)
  np.testing.assert_allclose(fit["r2"], 1.0, rtol=1e-12)
  np.testing.assert_allclose(fit["log_volume"], np.sum(np.log(lam[4:60])), rtol=1e-12)
  assert fit["n"] == 56 and S.powerlaw_slope(lam, 5, 60) == fit["slope"]


def test_fits_equal_scipy_and_numpy():
  rng = np.random.default_rng(3)
  lam = np.sort(np.arange(1, 201) ** -1.1 * np.exp(0.2 * rng.standard_normal(200)))[::-1]
  r = np.arange(11, 151)
  ref = stats.linregress(np.log(r), np.log(lam[10:150]))
  fit = S.powerlaw_fit(lam, 11, 150, "ols")
  np.testing.assert_allclose([fit["slope"], fit["intercept"], fit["r2"]],
                             [ref.slope, ref.intercept, ref.rvalue ** 2], rtol=1e-10)
  # np.polyfit weights multiply residuals, so sqrt(1/rank) gives weights 1/rank on squares.
  slope_ref, icpt_ref = np.polyfit(np.log(r), np.log(lam[10:150] / lam.sum()), 1,
                                   w=np.sqrt(1.0 / r))
  fit = S.powerlaw_fit(lam, 11, 150, "rank")
  np.testing.assert_allclose([fit["slope"], fit["intercept"]], [slope_ref, icpt_ref], rtol=1e-10)


@pytest.mark.parametrize("eig, lo, hi, match", [
    (np.ones(10), 0, 5, "lo=0, hi=5"),
    (np.ones(10), 3, 11, "lo=3, hi=11"),
    (np.ones(10), 4, 4, "lo=4, hi=4"),
    (np.array([3.0, 2.0, 1.0, 0.0]), 1, 4, "eigenvalues <= 0"),
    (np.ones((3, 3)), 1, 2, "1-D spectrum"),
    (np.array([1.0, np.nan, 0.5]), 1, 2, "NaN or Inf"),
])
def test_bad_window_one_line(eig, lo, hi, match):
  with pytest.raises(ConfigError, match=match) as e:
    S.powerlaw_slope(eig, lo, hi)
  assert "\n" not in str(e.value)


def test_bad_weighting_and_points():
  with pytest.raises(ConfigError, match="weighting='log'"):
    S.powerlaw_fit(np.ones(5), 1, 3, "log")
  with pytest.raises(ConfigError, match="NaN or Inf"):
    S.covariance(np.array([[1.0, np.inf], [0.0, 0.0]]))


def test_sharded_covariance_communicates_only_the_dxd_sum():
  """Row blocks stay on their devices: the one collective is the all-reduce of (d, d)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = make_mesh()
  x = jax.device_put(np.zeros((8, 4, 32, 6), np.float32), NamedSharding(mesh, P("data")))
  hlo = S._blocked_gram.lower(x, np.zeros(6, np.float32), n=1000).compile().as_text()
  lines = [l for l in hlo.splitlines() if "=" in l and any(
      op in l for op in ("all-gather(", "all-reduce(", "all-to-all(", "collective-permute("))]
  assert len(lines) == 1 and "all-reduce(" in lines[0] and "f32[6,6]" in lines[0], lines
