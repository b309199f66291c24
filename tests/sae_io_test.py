"""SAE export/import: SAELens layout, round trip, Gemma Scope params.npz.

References we did not write: the SAELens file layout (W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec, threshold in sae_weights.safetensors, read back with the safetensors library) and
the JumpReLU formula of Gemma Scope evaluated in numpy.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxcode.models import sae, sae_io
from jaxcode.errors import ConfigError
from tests.sae_fixture import sae_config


def _one_sae(arch, **kw):
  rng = np.random.default_rng(0)
  D, M = 12, 40
  x = (rng.standard_normal((64, D)) * 5 + 3).astype(np.float32)   # needs normalisation
  cfg = sae_config(architecture=arch, d_in=D, d_sae=M, **kw)
  params, aux = sae.make_init(cfg, x)(jax.random.key(0))
  params, aux = sae.select(params, 0), sae.select(aux, 0)
  params["b_enc"] = jnp.asarray(rng.standard_normal(M) * 0.1, jnp.float32)
  params["W_dec"] = params["W_dec"] * 1.3
  if "threshold" in params:
    params["threshold"] = jnp.asarray(rng.uniform(0.0, 0.3, M), jnp.float32)
  aux["threshold"] = jnp.float32(0.15)
  return cfg, params, aux, x


@pytest.mark.parametrize("arch", sae.ARCHITECTURES)
def test_export_import_round_trip(arch, tmp_path):
  cfg, params, aux, x = _one_sae(arch, k=5, normalisation="sqrt_d")
  d = sae_io.export_saelens(str(tmp_path / arch), cfg, params, aux, metadata={"hook": "h"})
  w = load_file(os.path.join(d, "sae_weights.safetensors"))
  conf = json.load(open(os.path.join(d, "cfg.json")))
  assert w["W_enc"].shape == (12, 40) and w["W_dec"].shape == (40, 12)
  assert w["b_enc"].shape == (40,) and w["b_dec"].shape == (12,)
  assert ("threshold" in w) == (conf["architecture"] == "jumprelu")
  assert conf["d_in"] == 12 and conf["d_sae"] == 40 and conf["normalize_activations"] == "none"
  ext = sae_io.load_saelens(d)
  f_ours = np.asarray(sae.encode(cfg, params, aux, jnp.asarray(x)))
  f_ext = np.asarray(sae_io.encode(ext, x))
  assert (f_ours > 0).sum() > 0
  np.testing.assert_allclose(f_ext, f_ours, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sae_io.decode(ext, f_ext), sae.decode(cfg, params, aux, f_ours),
                             rtol=1e-4, atol=1e-4)


def test_gemma_scope_npz(tmp_path):
  rng = np.random.default_rng(1)
  D, M = 6, 16
  arrs = {"W_enc": rng.standard_normal((D, M)), "W_dec": rng.standard_normal((M, D)),
          "b_enc": rng.standard_normal(M) * 0.1, "b_dec": rng.standard_normal(D),
          "threshold": rng.uniform(0.2, 0.8, M)}
  p = str(tmp_path / "params.npz")
  np.savez(p, **{k: v.astype(np.float32) for k, v in arrs.items()})
  ext = sae_io.load_gemma_scope_npz(p)
  x = rng.standard_normal((9, D))
  pre = x @ arrs["W_enc"] + arrs["b_enc"]
  f = pre * (pre > arrs["threshold"])          # Gemma Scope JumpReLU, numpy
  np.testing.assert_allclose(sae_io.encode(ext, x), f, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sae_io.decode(ext, f), f @ arrs["W_dec"] + arrs["b_dec"],
                             rtol=1e-5, atol=1e-5)


def test_import_errors(tmp_path):
  with pytest.raises(ConfigError, match="missing cfg.json"):
    sae_io.load_saelens(str(tmp_path))
  np.savez(str(tmp_path / "bad.npz"), W_enc=np.zeros((2, 3)))
  with pytest.raises(ConfigError, match="missing arrays"):
    sae_io.load_gemma_scope_npz(str(tmp_path / "bad.npz"))
  cfg, params, aux, x = _one_sae("relu")
  ext = sae_io.load_saelens(sae_io.export_saelens(str(tmp_path / "r"), cfg, params, aux))
  with pytest.raises(ConfigError, match="input d_in=5 does not match"):
    sae_io.encode(ext, np.zeros((2, 5)))
