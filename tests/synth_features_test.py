"""The SynthSAEBench-style generator (jaxcode.data.synth_features) against closed forms:
firing rates from the configured probabilities (enumerating sibling subsets by hand for the
mutual exclusion), bivariate-normal orthant probabilities from scipy for the copula,
truncated-normal means from scipy for the magnitudes, and the hierarchy's constraints."""

import itertools

import jax
import numpy as np
import pytest
from scipy import stats

from jaxcode.data import synth_features as sf
from jaxcode.errors import ConfigError

# 2 roots, 3 children each, depth 2: 2 + 6 + 18 = 26 tree features, 14 free; magnitudes with
# a tiny std so a firing feature is never clipped to 0 by the ReLU.
SPEC = sf.SynthSpec(n_features=40, d_hidden=8, p_exponent=0.5, p_max=0.6, p_min=0.05, n_roots=2,
                    branching=3, depth=2, corr_rank=0, mag_std_mean=0.05, mag_std_std=0.0,
                    seed=3)


def _draw(spec, params, n, seed=0, batch=20_000):
  draw = jax.jit(lambda p, k: sf.sample(spec, p, k, batch))
  hs, as_ = [], []
  for step in range(n // batch):
    h, a = draw(params, sf.batch_key(seed, step))
    hs.append(np.asarray(h)), as_.append(np.asarray(a))
  return np.concatenate(hs), np.concatenate(as_)


def _expected_rates(spec):
  """By hand: q_r = rescaled r^-0.5; child copula probability min(1, q/q_par (1 + sum of the
  other siblings' q/q_par)); a child's rate = its parent's rate x P(it fires and wins the
  uniform draw among its firing siblings), the siblings' firing independent."""
  r = np.arange(1, spec.n_features + 1.0) ** -spec.p_exponent
  q = spec.p_min + (r - r[-1]) / (r[0] - r[-1]) * (spec.p_max - spec.p_min)
  rate = q.copy()
  b = spec.branching
  start_prev, n_prev, start = 0, spec.n_roots, spec.n_roots
  for _ in range(spec.depth):
    for j in range(n_prev):
      par = start_prev + j
      kids = start + j * b + np.arange(b)
      c = q[kids] / q[par]
      p = np.minimum(1.0, c * (1.0 + c.sum() - c))
      for i in range(b):
        win = 0.0
        for on in itertools.product((0, 1), repeat=b):
          if not on[i]:
            continue
          pr = np.prod([p[m] if on[m] else 1 - p[m] for m in range(b)])
          win += pr / sum(on)
        rate[kids[i]] = rate[par] * win
    start_prev, n_prev, start = start, n_prev * b, start + n_prev * b
  return rate


def test_firing_rates_and_hierarchy():
  params = sf.make_params(SPEC)
  h, a = _draw(SPEC, params, 20_000)
  rate = (a > 0).mean(0)
  want = _expected_rates(SPEC)
  se = np.sqrt(want * (1 - want) / len(a))
  np.testing.assert_array_less(np.abs(rate - want), 5 * se + 1e-4)
  # The hierarchy: a child only with its parent, at most one child per parent.
  par = SPEC.parent
  kids = np.nonzero(par >= 0)[0]
  assert not np.any((a[:, kids] > 0) & (a[:, par[kids]] <= 0))
  for p in np.unique(par[kids]):
    assert np.max(np.sum(a[:, par == p] > 0, axis=1)) <= 1
  # h = a d + b, the dictionary's rows unit vectors (closed form, numpy).
  d = np.asarray(params["dictionary"])
  np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(h[:100], a[:100] @ d + np.asarray(params["bias"]), atol=1e-4)
  assert np.linalg.norm(np.asarray(params["bias"])) == pytest.approx(SPEC.bias_norm, rel=1e-5)


def test_copula_correlation_sign_and_joint_rate():
  """F rows (0.8), (0.8), (-0.8): indicator correlations +, -; joint firing rates equal the
  bivariate normal orthant probabilities of correlation +-0.64 (scipy)."""
  spec = sf.SynthSpec(n_features=12, d_hidden=4, p_max=0.3, p_min=0.1, corr_rank=1, seed=1)
  params = dict(sf.make_params(spec))
  f = np.zeros((12, 1), np.float32)
  f[0], f[1], f[2] = 0.8, 0.8, -0.8
  params["F"] = jax.numpy.asarray(f)
  _, a = _draw(spec, params, 20_000)
  on = a > 0
  t = stats.norm.ppf(1 - np.asarray(params["p"], np.float64))
  for j, rho in ((1, 0.64), (2, -0.64)):
    want = stats.multivariate_normal(cov=[[1, rho], [rho, 1]]).cdf([-t[0], -t[j]])
    got = np.mean(on[:, 0] & on[:, j])
    assert abs(got - want) < 5 * np.sqrt(want / len(a)) + 1e-4
    assert np.sign(np.corrcoef(on[:, 0], on[:, j])[0, 1]) == np.sign(rho)
  assert abs(np.corrcoef(on[:, 0], on[:, 5])[0, 1]) < 0.03   # independent features


def test_magnitudes_and_determinism():
  """A free feature's active magnitudes: the truncated normal N(mu, sigma^2 | > 0) (scipy);
  batches are pure functions of (seed, step)."""
  spec = sf.SynthSpec(n_features=16, d_hidden=4, p_max=0.5, p_min=0.2, mag_max=1.0,
                      mag_min=0.5, mag_std_mean=0.5, mag_std_std=0.2, seed=5)
  params = sf.make_params(spec)
  _, a = _draw(spec, params, 20_000)
  mu, sigma = np.asarray(params["mu"]), np.asarray(params["sigma"])
  np.testing.assert_allclose(mu[[0, -1]], [1.0, 0.5], rtol=1e-6)
  for i in (0, 15):
    v = a[:, i][a[:, i] > 0]
    want = stats.truncnorm(-mu[i] / sigma[i], np.inf, loc=mu[i], scale=sigma[i]).mean()
    assert abs(v.mean() - want) < 5 * v.std() / np.sqrt(len(v))
  src = sf.SynthSource(spec, params, seed=2)
  np.testing.assert_array_equal(src.batch(7, 64), src.batch(7, 64))
  assert not np.array_equal(src.batch(7, 64), src.batch(8, 64))
  np.testing.assert_array_equal(src.batch_rows(7, 64, slice(8, 16)), src.batch(7, 64)[8:16])


def test_orthogonalisation_pushes_rows_apart():
  """Adam on the off-diagonal Gram mass brings sum_{i != j} (d_i . d_j)^2 near its minimum
  over unit vectors, N^2 / D - N (a tight frame), from above it."""
  n, d = 24, 6

  def frame_potential(steps):
    spec = sf.SynthSpec(n_features=n, d_hidden=d, seed=0, ortho_steps=steps, ortho_lr=0.01)
    w = np.asarray(sf.make_params(spec)["dictionary"], np.float64)
    return np.sum((w @ w.T) ** 2) - n

  bound = n * n / d - n
  assert frame_potential(0) > 1.1 * bound
  assert frame_potential(300) < 1.001 * bound


def test_uniforms_inside_unit_interval():
  """The hash uniforms over 2^22 draws: strictly inside (0, 1), so Phi^-1 is finite (the
  largest float32 below 1 is 1 - 2^-24), mean 1/2 and variance 1/12 within sampling error."""
  u = np.asarray(jax.jit(lambda k: sf._uniform(k, (2048, 2048)))(jax.random.key(0)))
  assert u.min() > 0 and u.max() < 1 and u.max() <= 1 - 2.0 ** -24
  assert np.isfinite(np.asarray(sf._normal(jax.random.key(0), (2048, 2048)))).all()
  assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12) / 2048
  assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180) / 2048


@pytest.mark.parametrize("kw, msg", [
    (dict(d_hidden=0), "synth.d_hidden=0: expected an integer >= 1"),
    (dict(n_roots=4, branching=4, depth=3), "the hierarchy needs 340 features"),
    (dict(p_min=0.5, p_max=0.4), "expected 0 < p_min <= p_max <= 1"),
])
def test_bad_spec(kw, msg):
  args = dict(n_features=40, d_hidden=8) | kw
  with pytest.raises(ConfigError, match=msg) as e:
    sf.SynthSpec(**args)
  assert "\n" not in str(e.value)
