"""SAE models: planted-dictionary recovery, hand-derived gradients, sharding, bad input.

References we did not write: the analytic ground truth of a planted sparse dictionary
(jaxcode.data.synthetic), gradients derived by hand from the published formulas
(Rajamanoharan et al. 2024 for JumpReLU's straight-through estimator; Gao et al. 2024 for
TopK + AuxK) and evaluated in numpy, and single-device execution as the reference for the
sharded (2 data x 4 model) programs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcode import parallel
from jaxcode.errors import ConfigError
from tests.sae_fixture import sae_config
from jaxcode.data.sources import SyntheticSource
from jaxcode.data.synthetic import PlantedDictionary, mean_max_cosine
from jaxcode.models import sae

PLANTED = PlantedDictionary(d_in=32, n_features=48, l0=3.0, alpha=0.3, seed=0)

RECIPES = {
    "relu": dict(sparsity_coef=0.3, dec_init_norm=0.1),
    "relu_classic": dict(sparsity_coef=0.3),
    "topk": dict(k=3),
    "batchtopk": dict(k=3),
    "matryoshka": dict(k=3, matryoshka_widths=(32,)),
    "jumprelu": dict(sparsity_coef=0.05, jump_bandwidth=0.05, jump_threshold_init=0.1),
    "jumprelu_tanh": dict(sparsity_coef=0.06, jump_bandwidth=0.05, jump_threshold_init=0.1),
}


def fit_scan(cfg, xs_TBD, lr=3e-3, mesh=None, key=0):
  """A plain jitted optax Adam loop (lax.scan over precomputed batches)."""
  init = sae.make_init(cfg, xs_TBD[0])
  params, aux = init(jax.random.key(key))
  loss = sae.make_loss(cfg, mesh)
  tx = optax.adam(lr)
  post = sae.post_update(cfg)

  def body(carry, inp):
    params, opt, aux = carry
    x, s = inp
    (_, (m, aux)), g = jax.value_and_grad(loss, has_aux=True)(params, aux, x, None, s)
    u, opt = tx.update(g, opt, params)
    return (post(optax.apply_updates(params, u), aux), opt, aux), m

  run = jax.jit(lambda p, a, xs: jax.lax.scan(body, (p, tx.init(p), a),
                                              (xs, jnp.arange(xs.shape[0]))))
  (params, _, aux), ms = run(params, aux, jnp.asarray(xs_TBD))
  return params, aux, ms


@pytest.fixture(scope="module")
def planted_batches():
  src = SyntheticSource(PLANTED, seed=0)
  return np.stack([src.batch(s, 256) for s in range(600)])


@pytest.mark.parametrize("arch", sae.ARCHITECTURES)
def test_recovers_planted_dictionary(arch, planted_batches):
  cfg = sae_config(architecture=arch, d_in=32, d_sae=64, dead_tokens=256 * 50,
                      **RECIPES[arch])
  params, aux, ms = fit_scan(cfg, planted_batches)
  cos = mean_max_cosine(PLANTED.dictionary, np.asarray(params["W_dec"][0]))
  l0 = float(np.mean(ms["l0"][-50:]))
  assert cos >= 0.9, (arch, cos)
  assert 1.5 <= l0 <= 6.5, (arch, l0)   # planted L0 is 3
  # Inference codes (thresholds for batchtopk / matryoshka) give a similar L0.
  x = jnp.asarray(planted_batches[-1])
  f = sae.encode(cfg, sae.select(params, 0), sae.select(aux, 0), x)
  assert 1.0 <= float(jnp.mean(jnp.sum(f > 0, -1))) <= 8.0


def _rect(u):
  return ((u > -0.5) & (u < 0.5)).astype(np.float64)


def test_jumprelu_gradients_match_hand_derivation():
  rng = np.random.default_rng(0)
  B, D, M, eps, lam = 5, 4, 6, 0.3, 0.7
  cfg = sae_config(architecture="jumprelu", d_in=D, d_sae=M, sparsity_coef=lam,
                      jump_bandwidth=eps, normalisation="none", b_dec_init="zeros")
  params, aux = sae.make_init(cfg, rng.standard_normal((8, D)))(jax.random.key(1))
  params = jax.tree.map(lambda v: v[0], params)
  aux = jax.tree.map(lambda v: v[0], aux)
  params["W_enc_MD"] = jnp.asarray(rng.standard_normal((M, D)), jnp.float32)
  params["b_enc"] = jnp.asarray(rng.standard_normal(M) * 0.3, jnp.float32)
  params["threshold"] = jnp.asarray(rng.uniform(0.1, 0.6, M), jnp.float32)
  x = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
  g = jax.jit(jax.grad(lambda p: sae._loss_one(cfg, p, aux, x, jnp.int32(0), None, jnp.bool_(True))[0]))(params)

  W, b, th = (np.asarray(params[k], np.float64) for k in ("W_enc_MD", "b_enc", "threshold"))
  W = W.T                                                      # [D, M] as in the papers
  Wd, bd = np.asarray(params["W_dec"], np.float64), np.asarray(params["b_dec"], np.float64)
  xn = np.asarray(x, np.float64)
  pre = xn @ W + b
  z = np.maximum(pre, 0)
  on = (z > th).astype(float)
  f = z * on
  r = xn - (f @ Wd + bd)
  dLdf = -2.0 * r @ Wd.T / B                                   # d mean||r||^2 / df
  K = _rect((z - th) / eps)
  dth = (-(th / eps) * K * dLdf).sum(0) + (-(lam / eps) * K / B).sum(0)
  dpre = dLdf * on * (pre > 0)                                 # no gradient through the jump
  np.testing.assert_allclose(g["threshold"], dth, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g["W_enc_MD"], (xn.T @ dpre).T, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g["b_enc"], dpre.sum(0), rtol=1e-4, atol=1e-6)
  assert g["threshold"].dtype == jnp.float32


@pytest.mark.parametrize("sparse", [False, True])
def test_topk_auxk_gradients_match_hand_derivation(sparse):
  rng = np.random.default_rng(1)
  B, D, M, k, ka, alpha = 6, 5, 12, 2, 3, 0.25
  cfg = sae_config(architecture="topk", d_in=D, d_sae=M, k=k, k_aux=ka, aux_alpha=alpha,
                      dead_tokens=100, normalisation="none", sparse_decode=sparse)
  params, aux = sae.make_init(cfg, rng.standard_normal((8, D)))(jax.random.key(2))
  params = jax.tree.map(lambda v: v[0], params)
  aux = jax.tree.map(lambda v: v[0], aux)
  params["b_enc"] = jnp.asarray(rng.standard_normal(M) * 0.3, jnp.float32)
  params["b_dec"] = jnp.asarray(rng.standard_normal(D), jnp.float32)   # nonzero on purpose
  dead = np.zeros(M, bool)
  dead[[1, 4, 5, 7, 9, 11]] = True
  aux["tokens_since_fired"] = jnp.where(jnp.asarray(dead), 100, 0).astype(jnp.int32)
  x = jnp.asarray(rng.standard_normal((B, D)) + 0.5, jnp.float32)
  (loss, (m, new_aux)), g = jax.jit(jax.value_and_grad(
      lambda p: sae._loss_one(cfg, p, aux, x, jnp.int32(0), None, jnp.bool_(True)), has_aux=True))(params)

  W, b = np.asarray(params["W_enc_MD"], np.float64).T, np.asarray(params["b_enc"], np.float64)
  Wd, bd = np.asarray(params["W_dec"], np.float64), np.asarray(params["b_dec"], np.float64)
  xn = np.asarray(x, np.float64)
  pre = (xn - bd) @ W + b
  sel = np.zeros((B, M))
  np.put_along_axis(sel, np.argsort(-pre, axis=1)[:, :k], 1.0, axis=1)
  f = np.maximum(pre, 0) * sel
  r = xn - (f @ Wd + bd)
  masked = np.where(dead, pre, -np.inf)
  asel = np.zeros((B, M))
  np.put_along_axis(asel, np.argsort(-masked, axis=1)[:, :ka], 1.0, axis=1)
  a = np.maximum(pre, 0) * asel
  e_hat = a @ Wd                                                # AuxK decode: no b_dec
  aux_mse = np.mean(np.sum((r - e_hat) ** 2, -1))
  np.testing.assert_allclose(m["aux_loss"], aux_mse, rtol=1e-5)
  # With b_dec added, the auxiliary loss would differ: exclusion is what we measured.
  assert abs(np.mean(np.sum((r - e_hat - bd) ** 2, -1)) - aux_mse) > 1e-2
  np.testing.assert_allclose(loss, np.mean(np.sum(r ** 2, -1)) + alpha * aux_mse, rtol=1e-5)

  dpre = (sel * (pre > 0) * (-2.0 * r @ Wd.T)
          + alpha * asel * (pre > 0) * (2.0 * (e_hat - r) @ Wd.T)) / B
  gWd = (-2.0 * f.T @ r + alpha * 2.0 * a.T @ (e_hat - r)) / B
  gWd = gWd - np.sum(gWd * Wd, -1, keepdims=True) * Wd          # projected (unit-norm rows)
  np.testing.assert_allclose(g["W_dec"], gWd, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g["W_enc_MD"], ((xn - bd).T @ dpre).T, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g["b_enc"], dpre.sum(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g["b_dec"], -2.0 * r.sum(0) / B - W @ dpre.sum(0),
                             rtol=1e-4, atol=1e-6)
  # Dead counters: fired latents reset to 0, others advance by B tokens (capped).
  fired = (f > 0).any(0)
  expect = np.where(fired, 0, np.minimum(np.where(dead, 100, 0) + B, 100))
  np.testing.assert_array_equal(new_aux["tokens_since_fired"], expect)


def _shard_state(tree, mesh, rules):
  return jax.device_put(tree, parallel.tree_shardings(tree, mesh, rules))


@pytest.mark.parametrize("arch,extra", [("topk", dict(k=4, sparse_decode=True)),
                                        ("batchtopk", dict(k=3))])
def test_sharded_equals_single_device(arch, extra):
  """2 data x 4 model (latents sharded, sharded top-k) vs one device, sweep of 2 SAEs.

  The two architectures with explicit collectives (shard_map top-k / batch k-th largest); the
  others differ only in elementwise code that jit partitions on its own.
  """
  D, M, B, steps = 8, 32, 16, 4
  if "k" in extra:
    extra = dict(extra, k=(extra["k"], extra["k"] - 1))
  else:
    extra = dict(extra, sparsity_coef=(extra["sparsity_coef"], 2 * extra["sparsity_coef"]))
  cfg = sae_config(architecture=arch, d_in=D, d_sae=M, dead_tokens=2 * B, k_aux=3, **extra)
  src = SyntheticSource(PlantedDictionary(d_in=D, n_features=24, l0=3.0, seed=3))
  xs = jnp.asarray(np.stack([src.batch(s, B) for s in range(steps)]))
  mesh = parallel.make_mesh(2, 4)
  params, aux = sae.make_init(cfg, np.asarray(xs[0]))(jax.random.key(0))
  tx = optax.sgd(0.05)   # plain SGD: Adam would amplify float-rounding noise in tiny gradients

  def run(mesh_or_none):
    loss = sae.make_loss(cfg, mesh_or_none)
    post = sae.post_update(cfg)

    def body(carry, inp):
      p, o, a = carry
      (_, (m, a)), g = jax.value_and_grad(loss, has_aux=True)(p, a, inp[0], None, inp[1])
      u, o = tx.update(g, o, p)
      return (post(optax.apply_updates(p, u), a), o, a), m

    p, a, x = params, aux, xs
    if mesh_or_none is not None:
      p = _shard_state(p, mesh, sae.param_rules())
      a = _shard_state(a, mesh, sae.aux_rules())
      x = jax.device_put(xs, parallel.sharding_for(mesh, (None, "data", None)))
      assert p["W_enc_MD"].sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
    (p, _, a), m = jax.jit(lambda p, a, x: jax.lax.scan(body, (p, tx.init(p), a),
                                                        (x, jnp.arange(steps))))(p, a, x)
    return jax.device_get((p, a, m))

  p1, a1, m1 = run(None)
  p8, a8, m8 = run(mesh)
  for k in p1:
    np.testing.assert_allclose(p8[k], p1[k], rtol=1e-4, atol=1e-5, err_msg=k)
  np.testing.assert_array_equal(a8["tokens_since_fired"], a1["tokens_since_fired"])
  np.testing.assert_allclose(a8["threshold"], a1["threshold"], rtol=1e-5)
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)
  if arch in sae.TOPK_FAMILY:
    assert np.any(a1["tokens_since_fired"] >= 2 * B)   # some latents went dead: AuxK ran


def test_sharded_topk_selects_global_topk():
  mesh = parallel.make_mesh(2, 4)
  x = jax.random.normal(jax.random.key(0), (8, 64))
  xs = jax.device_put(x, parallel.sharding_for(mesh, ("data", "model")))
  v, i = jax.jit(functools.partial(sae.topk_indices, k=5, mesh=mesh))(xs)
  v0, i0 = jax.lax.top_k(x, 5)
  np.testing.assert_array_equal(i, i0)
  np.testing.assert_allclose(v, v0)
  kth = jax.jit(lambda z: sae.batch_kth_largest(z, 40, jnp.int32(17), mesh))(xs)
  assert float(kth) == float(np.sort(np.asarray(x).ravel())[::-1][16])


def _assert_same_value_and_grad(out0, out1, compare_aux: bool = False):
  """Two jax.value_and_grad(make_loss, has_aux=True) results: equal loss, metrics, grads
  (and aux when asked)."""
  (l0, (m0, a0)), g0 = out0
  (l1, (m1, a1)), g1 = out1
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-7, err_msg=k)
  if compare_aux:
    for k in a0:
      np.testing.assert_allclose(a1[k], a0[k], rtol=1e-6, err_msg=k)
  for k in g0:
    np.testing.assert_allclose(g1[k], g0[k], rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("dead_tokens", [1, 10**9])   # AuxK active on a third of latents / off
def test_sparse_decode_equals_dense(dead_tokens):
  """The sparse TopK path (custom VJPs, one backward loop for TopK and AuxK ranks) against
  JAX's own autodiff of the dense path: same loss, metrics and gradients, single SAE and a
  vmapped sweep of k."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  for ks in (4, (4, 2)):
    outs = []
    for sparse in (False, True):
      cfg = sae_config(architecture="topk", d_in=8, d_sae=32, k=ks, k_aux=4,
                          dead_tokens=dead_tokens, sparse_decode=sparse,
                          sweep_mode="auto" if sparse else "vmap")
      # the sparse sweep of k runs unrolled (each SAE at its own k), the dense one vmapped
      assert sae.unrolled_sweep(cfg) == (sparse and isinstance(ks, tuple))
      params, aux = sae.make_init(cfg, np.asarray(x))(jax.random.key(0))
      aux["tokens_since_fired"] = aux["tokens_since_fired"].at[:, ::3].set(1)
      outs.append(jax.jit(jax.value_and_grad(sae.make_loss(cfg), has_aux=True))(
          params, aux, x, None, 0))
    _assert_same_value_and_grad(outs[0], outs[1])
    if dead_tokens == 1:
      m0 = outs[0][0][1][0]
      assert float(m0["aux_loss"] if "aux_loss" in m0 else m0["aux_loss/0"]) > 0


def test_unit_norm_decoder_gradient_is_projected():
  cfg = sae_config(architecture="relu_classic", d_in=6, d_sae=10, sparsity_coef=0.1)
  x = np.random.default_rng(5).standard_normal((12, 6)).astype(np.float32)
  params, aux = sae.make_init(cfg, x)(jax.random.key(0))
  g = jax.jit(jax.grad(lambda p: sae.make_loss(cfg)(p, aux, jnp.asarray(x), None, 0)[0]))(params)
  np.testing.assert_allclose(jnp.sum(g["W_dec"] * params["W_dec"], -1), 0.0, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(params["W_dec"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(params["W_enc_MD"][0], params["W_dec"][0])


def test_init_normalisation_and_geometric_median():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((400, 5)) * 3.0 + 2.0
  s = sae.estimate_norm_scale(x, "unit_mean_sq")
  np.testing.assert_allclose(np.mean(np.sum((s * x) ** 2, -1)), 1.0, rtol=1e-6)
  s = sae.estimate_norm_scale(x, "sqrt_d")
  np.testing.assert_allclose(np.mean(np.linalg.norm(s * x, axis=-1)), np.sqrt(5), rtol=1e-6)
  # Geometric median against scipy's minimiser of sum of distances.
  from scipy.optimize import minimize
  ref = minimize(lambda m: np.linalg.norm(x - m, axis=1).sum(), x.mean(0), method="Nelder-Mead",
                 options=dict(xatol=1e-8, fatol=1e-10, maxiter=20000)).x
  np.testing.assert_allclose(sae.geometric_median(jnp.asarray(x)), ref, atol=1e-3)


@pytest.mark.parametrize("kwargs,data_d,mesh_model,msg", [
    (dict(architecture="topk", k=0), None, None, "sae.k=0"),
    (dict(architecture="topk", k=65), None, None, "sae.k=65"),
    (dict(architecture="relu", sparsity_coef=-1.0), None, None, "sparsity_coef=-1.0"),
    (dict(architecture="gated"), None, None, "architecture='gated'"),
    (dict(architecture="relu"), 7, None, "d_in=8 does not match the data's d_in=7"),
    (dict(architecture="relu", d_sae=66), None, 4, "model axis 4 does not divide d_sae=66"),
])
def test_bad_input_one_line(kwargs, data_d, mesh_model, msg):
  kw = dict(d_in=8, d_sae=64)
  kw.update(kwargs)
  cfg = sae_config(**kw)
  mesh = parallel.make_mesh(2, mesh_model) if mesh_model else None
  with pytest.raises(ConfigError, match=msg) as e:
    sae.validate(cfg, mesh, data_d)
  assert "\n" not in str(e.value)


def test_sparse_decode_choice():
  """'auto' resolves per backend from the benchmark's table; a bad value is one clear line."""
  auto = sae_config(architecture="topk", d_in=8, d_sae=32, k=4)
  assert auto.sparse_decode is sae.SPARSE_TOPK_FASTER.get(jax.default_backend(), False)
  assert sae_config(architecture="topk", d_in=8, d_sae=32, sparse_decode="dense").sparse_decode \
      is False
  with pytest.raises(ConfigError, match=r"sae.sparse_decode='fast'"):
    sae_config(architecture="topk", d_in=8, d_sae=32, sparse_decode="fast")


@pytest.mark.parametrize("arch,extra", [("relu", dict(sparsity_coef=(0.1, 0.3))),
                                        ("batchtopk", dict(k=(2, 4), dead_tokens=1))])
def test_sweep_modes_agree(arch, extra):
  """A sweep vmapped over the SAE axis and the same sweep unrolled (a static loop over SAEs)
  give the same losses, metrics, aux and gradients."""
  x = jnp.asarray(np.random.default_rng(6).standard_normal((16, 8)), jnp.float32)
  outs = []
  for mode in ("vmap", "unroll"):
    cfg = sae_config(architecture=arch, d_in=8, d_sae=24, sweep_mode=mode, **extra)
    params, aux = sae.make_init(cfg, np.asarray(x))(jax.random.key(1))
    outs.append(jax.jit(jax.value_and_grad(sae.make_loss(cfg), has_aux=True))(
        params, aux, x, None, 3))
  _assert_same_value_and_grad(outs[0], outs[1], compare_aux=True)
  with pytest.raises(ConfigError, match="sae.sweep_mode='pmap'"):
    sae_config(architecture=arch, d_in=8, d_sae=24, sweep_mode="pmap")
