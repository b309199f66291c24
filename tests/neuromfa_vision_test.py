"""Tests of jaxcode.analysis.neuromfa_vision, jaxcode.models.convnet and .denoiser.

References we did not write: hand-computed adjacencies of conv layers with chosen kernels
(Frobenius norms by hand: ||(3, 4)|| = 5), hand-counted parameters, scipy's chi-square law
for norms of Gaussian kernel slices (the null), the closed form of a bootstrap over two
points, NumPy's cumprod for the DDPM schedule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs.neuromfa_vision import claim4_block
from jaxcode import parallel
from jaxcode.analysis import neuromfa_vision as nv
from jaxcode.errors import ConfigError
from jaxcode.models import convnet, denoiser


def _resnet_params(width, n_blocks, fill):
  """ResNet params (shapes from Flax, abstract init) with kernels set by fill(name, shape)."""
  shapes = jax.eval_shape(lambda k: convnet.make(width, n_blocks).init(
      k, jnp.zeros((1, 8, 8))), jax.random.PRNGKey(0))["params"]
  return {n: {"kernel": fill(n, v["kernel"].shape), "bias": np.zeros(v["bias"].shape)}
          for n, v in shapes.items()}


def test_conv_nin_against_hand_built_network():
  # 2 channels, one block; conv1's slice (i, j) holds 3 at (0, 0), 4 at (1, 1) and i + j at
  # (2, 2): hand norms sqrt(9 + 16 + (i+j)^2) = 5, sqrt(26), sqrt(26), sqrt(29)
  def fill(name, shape):
    k = np.zeros(shape)
    if name == "block0_conv1":
      for i in range(2):
        for j in range(2):
          k[0, 0, i, j], k[1, 1, i, j], k[2, 2, i, j] = 3.0, 4.0, i + j
    elif name == "head":
      k[:] = -np.arange(np.prod(shape)).reshape(shape)
    else:
      k[1, 2] = 2.0          # one tap of 2 in every slice: norm 2
    return k
  raw = nv.resnet_raw(_resnet_params(2, 1, fill))
  assert raw.names == ["input", "stem", "block0.conv1", "block0.out", "head"]
  assert raw.widths == [1, 2, 2, 2, 10] and raw.skip_pairs == [(1, 3)]
  net = nv.network(raw, nv.sample_layers(raw.widths, 16, 0))
  np.testing.assert_allclose(net.kernels[0], [[2.0, 2.0]])
  np.testing.assert_allclose(net.kernels[1], np.sqrt([[25, 26], [26, 29]]))
  np.testing.assert_allclose(net.kernels[2], np.full((2, 2), 2.0))
  # the dense head is a 1x1 "conv": edge weight |w|
  np.testing.assert_allclose(net.kernels[3], np.arange(20).reshape(2, 10))
  # identity shortcut: stem channel i -> block output channel i
  (a, b, ia, ib), = net.skips
  assert (a, b) == (1, 3) and ia.tolist() == [0, 1] and ib.tolist() == [0, 1]
  assert net.n_edges == 2 + 4 + 4 + 19 + 2     # the head's zero weight is no edge


def test_sampling_takes_narrow_layers_whole():
  idx = nv.sample_layers([1, 40, 5], 8, seed=3)
  assert idx[0].tolist() == [0] and idx[2].tolist() == list(range(5))
  assert len(np.unique(idx[1])) == 8 and idx[1].max() < 40
  np.testing.assert_array_equal(idx[1], nv.sample_layers([1, 40, 5], 8, seed=3)[1])


def test_denoiser_nin_is_its_dense_chain():
  m = denoiser.make(hidden=5, depth=2, side=2, n_time=2)
  params = jax.eval_shape(lambda k: m.init(k, jnp.zeros((1, 4)), jnp.ones((1,), jnp.int32), 10),
                          jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(0)
  params = {n: {"kernel": rng.normal(size=v["kernel"].shape), "bias": np.zeros(v["bias"].shape)}
            for n, v in params.items()}
  raw = nv.denoiser_raw(params)
  assert raw.widths == [6, 5, 5, 4] and raw.skip_pairs == []
  net = nv.network(raw, nv.sample_layers(raw.widths, 64, 0))
  for l in range(3):
    np.testing.assert_allclose(net.kernels[l], np.abs(params[f"Dense_{l}"]["kernel"]))


def test_parameter_counts_match_hand_formula():
  # ResNet width 5, 2 blocks, 10 classes: stem 3*3*1*5 + 5 = 50; blocks 2 * 2 * (9*25 + 5)
  # = 920; head 5*10 + 10 = 60  -> 1030
  shapes = jax.eval_shape(lambda k: convnet.make(5, 2).init(k, jnp.zeros((1, 28, 28))),
                          jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 1030 == convnet.n_params(5, 2)
  # denoiser hidden 7, depth 3, side 3 (D 9), 4 time features: (13*7 + 7) + 2*(49 + 7)
  # + (7*9 + 9) = 98 + 112 + 72 = 282
  m = denoiser.make(7, 3, 3, 4)
  shapes = jax.eval_shape(lambda k: m.init(k, jnp.zeros((1, 9)), jnp.ones((1,), jnp.int32), 10),
                          jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 282 == denoiser.n_params(7, 3, 3, 4)
  # conv denoiser width 3, 1 block, 2 time channels: stem 3*3*(1+2)*3 + 3 = 84; block
  # 2 * (9*9 + 3) = 168; head 3*3*3*1 + 1 = 28  -> 280
  m = denoiser.make(3, 1, 5, 2, arch="conv")
  shapes = jax.eval_shape(lambda k: m.init(k, jnp.zeros((1, 25)), jnp.ones((1,), jnp.int32), 10),
                          jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 280 == denoiser.n_params(
      3, 1, 5, 2, arch="conv")
  raw = nv.resnet_raw(jax.tree.map(lambda s: np.ones(s.shape), shapes["params"]))
  assert raw.widths == [3, 3, 3, 3, 1]           # image + 2 time channels -> ... -> noise
  w = convnet.width_for_params(1030, 2)
  assert w == 5 and denoiser.hidden_for_params(282, 3, 3, 4) == 7


def test_null_edges_are_norms_of_gaussian_slices():
  # squared Frobenius norm of a 3x3 slice of N(0, s^2) entries, over s^2: chi-square, 9 dof
  rng = np.random.default_rng(1)
  k = rng.normal(0, 0.3, (3, 3, 40, 40))
  raw = nv.RawNet([k], ["a", "b"], [])
  net = nv.null_network(raw, nv.sample_layers(raw.widths, 40, 0), seed=5)
  z = (net.kernels[0] ** 2).ravel() / k.std() ** 2
  assert stats.kstest(z, stats.chi2(9).cdf).pvalue > 1e-3


def test_ddpm_schedule_and_time_features():
  ab = np.asarray(denoiser.schedule(5, 0.1, 0.5))
  np.testing.assert_allclose(ab, np.cumprod(1 - np.linspace(0.1, 0.5, 5)), rtol=1e-6)
  f = np.asarray(denoiser.time_features(jnp.array([2]), 4, 4))
  s = 0.5
  np.testing.assert_allclose(f[0], [np.sin(np.pi * s), np.sin(2 * np.pi * s),
                                    np.cos(np.pi * s), np.cos(2 * np.pi * s)], atol=1e-6)


def test_bootstrap_over_two_points_closed_form():
  # two points, identical runs within a point: the resampled mean is d1, (d1+d2)/2 or d2
  # with probabilities 1/4, 1/2, 1/4; se = |d1 - d2| / (2 sqrt 2)
  t = np.array([1.0, 3.0])
  v = np.zeros((2, 3))
  out = nv.bootstrap_difference(t, v, 20000, 0, 0.9)
  assert out["delta"] == 2.0 and out["lo"] == 1.0 and out["hi"] == 3.0
  assert abs(out["se"] - 2 / (2 * np.sqrt(2))) < 0.02


def test_verdict_rules():
  mk = lambda d, lo, hi, units=4: {"delta": d, "lo": lo, "hi": hi, "units": units}
  base = {"metric": "m", "level": 0.95}
  assert nv._verdict({**base, "cnn": mk(1, .5, 2), "denoiser": mk(1, .1, 2)})[0] == "supported"
  assert nv._verdict({**base, "cnn": mk(1, .5, 2), "denoiser": mk(-1, -2, -.1)})[0] == \
      "not supported"
  assert nv._verdict({**base, "cnn": mk(1, -.5, 2), "denoiser": mk(1, .1, 2)})[0] == \
      "inconclusive"
  v, why = nv._verdict({**base, "cnn": mk(1, 1, 1, units=1), "denoiser": mk(1, .1, 2)})
  assert v == "inconclusive" and "no error bar" in why


def _tiny_block():
  b = claim4_block("tiny")
  b.train_seeds = (0,)
  b.checkpoint_steps = (4,)
  b.steps = 4
  b.denoiser.arch = "mlp"       # the conv denoiser shares the CNN's code path; mlp compiles fast
  return b


def test_claim4_end_to_end_and_resumes(tmp_path, monkeypatch):
  fam = [{"params": 3000, "E": 0.2, "E_null": 0.05}, {"params": 10 ** 9, "E": 1.0, "E_null": 0.}]
  b = _tiny_block()
  b.max_params = 5000
  out = nv.claim4(b, str(tmp_path), fam, mesh=parallel.single_device_mesh())
  assert out["figure"] == "figures/claim4.png" and (tmp_path / out["figure"]).stat().st_size > 0
  assert out["verdict"] == "inconclusive" and "no error bar" in out["reason"]
  assert out["skipped_family_points"] == [fam[1]]
  kinds = sorted(p["kind"] for p in out["points"])
  assert kinds == ["cnn", "denoiser"]
  for p in out["points"]:
    assert abs(p["params"] - 3000) / 3000 < 0.1 and [r["step"] for r in p["series"]] == [0, 4]
    assert p["series"][0]["emergence"] == 0.0 and np.isfinite(p["E"])
  cnn = next(p for p in out["points"] if p["kind"] == "cnn")
  assert 0.0 <= cnn["final_metric"] <= 1.0       # held-out accuracy
  # a rerun trains nothing and returns the same numbers; with a run's analysis deleted, its
  # params come back from its orbax checkpoints (bit for bit: the same numbers again)
  monkeypatch.setattr(nv.loop, "train", lambda *a, **k: pytest.fail("retrained"))
  (tmp_path / "claim4" / cnn["name"] / "nmfa.json").unlink()
  again = nv.claim4(b, str(tmp_path), fam, mesh=parallel.single_device_mesh())
  assert again["points"] == out["points"] and again["number"] == out["number"]


def test_claim4_bad_input_before_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(nv.loop, "train", lambda *a, **k: pytest.fail("computed"))
  b = _tiny_block()
  with pytest.raises(ConfigError, match="family_points=\\[\\]"):
    nv.claim4(b, str(tmp_path), [])
  with pytest.raises(ConfigError, match="family_points\\[0\\].E"):
    nv.claim4(b, str(tmp_path), [{"params": 10, "E": float("nan"), "E_null": 0.0}])
  b.data.image_size = 28
  with pytest.raises(ConfigError, match="image_size=28: the digits images are 8x8"):
    nv.claim4(b, str(tmp_path), [{"params": 3000, "E": 0.1, "E_null": 0.0}])
  b = _tiny_block()
  b.checkpoint_steps = (2, 16)
  with pytest.raises(ConfigError, match="checkpoint_steps"):
    nv.claim4(b, str(tmp_path), [{"params": 3000, "E": 0.1, "E_null": 0.0}])
