"""SAE metrics against independent implementations.

References: scikit-learn r2_score(multioutput='variance_weighted'), which is exactly
1 - sum||x - x_hat||^2 / sum||x - x_bar||^2 over the whole set; scipy's cosine distance;
scikit-learn cosine_similarity for the decoder max-cosine statistics; numpy for the rest.
"""

import os

import numpy as np
from scipy.spatial.distance import cosine as cos_dist
from sklearn.metrics import r2_score
from sklearn.metrics.pairwise import cosine_similarity

from jaxcode.analysis import sae_eval
from jaxcode.report import sae as report_sae


def _data():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((300, 7)) * np.arange(1, 8) + 4.0      # far from zero mean
  x_hat = x + rng.standard_normal(x.shape) * 0.8
  f = np.maximum(rng.standard_normal((300, 20)) - 1.0, 0)
  f[:, :3] = 0                                                  # three dead latents
  f[:, 3] = 1.0                                                 # one always-on latent
  return x, x_hat, f


def test_metrics_against_references():
  x, x_hat, f = _data()
  batches = [(x[i:i + 64], x_hat[i:i + 64], f[i:i + 64]) for i in range(0, 300, 64)]
  m = sae_eval.reconstruction_metrics(batches, 7, 20)
  np.testing.assert_allclose(m["explained_variance"],
                             r2_score(x, x_hat, multioutput="variance_weighted"), rtol=1e-10)
  per_batch = np.mean([r2_score(a, b, multioutput="variance_weighted") for a, b, _ in batches])
  assert abs(per_batch - m["explained_variance"]) > 1e-4     # the global sum is what we compute
  about_zero = 1 - np.sum((x - x_hat) ** 2) / np.sum(x ** 2)
  assert abs(about_zero - m["explained_variance"]) > 1e-2
  np.testing.assert_allclose(m["cosine"], np.mean([1 - cos_dist(a, b) for a, b in zip(x, x_hat)]))
  np.testing.assert_allclose(m["mse"], np.mean((x - x_hat) ** 2))
  np.testing.assert_allclose(m["l2_ratio"], np.mean(np.linalg.norm(x_hat, axis=1)
                                                    / np.linalg.norm(x, axis=1)))
  np.testing.assert_allclose(m["relative_reconstruction_bias"],
                             np.mean(np.sum(x_hat ** 2, 1)) / np.mean(np.sum(x * x_hat, 1)))
  np.testing.assert_allclose(m["l0"], np.mean(np.sum(f > 0, 1)))
  assert m["dead_fraction"] == 3 / 20
  dens = np.mean(f > 0, 0)
  assert m["dense_fraction_10pct"] == np.mean(dens > 0.1)
  assert m["dense_fraction_1pct"] == np.mean(dens > 0.01)
  assert np.sum(m["log10_density_hist"]["counts"]) == 17


def test_decoder_max_cosine_against_sklearn():
  w = np.random.default_rng(1).standard_normal((50, 6))
  w[7] = 2 * w[3]                                              # a duplicated direction
  c = cosine_similarity(w)
  np.fill_diagonal(c, -np.inf)
  ref = c.max(1)
  got = sae_eval.decoder_max_cosine(w, block=16)
  np.testing.assert_allclose(got["per_latent"], ref, rtol=1e-5, atol=1e-6)
  assert got["max"] > 0.999 and got["frac_over_0.9"] >= 2 / 50


def test_figures(tmp_path):
  x, x_hat, f = _data()
  m = sae_eval.reconstruction_metrics([(x, x_hat, f)], 7, 20)
  m2 = dict(m, l0=m["l0"] * 2, explained_variance=0.9)
  p1 = report_sae.plot_density_histogram([m, m2], ["a", "b"], str(tmp_path / "f/density.png"))
  p2 = report_sae.plot_l0_vs_ev([m, m2], ["a", "b"], str(tmp_path / "f/l0_ev.png"))
  for p in (p1, p2):
    assert os.path.getsize(p) > 1000
  s = sae_eval.summary(m)
  assert "feature_density" not in s and isinstance(s["log10_density_hist"]["counts"], list)
  # the stage's figures come from results.json alone (the summaries, labelled)
  results = {"saes": [dict(s, label="a"), dict(sae_eval.summary(m2), label="b")]}
  paths = report_sae.write_all(results, str(tmp_path / "figs"))
  assert [os.path.basename(p) for p in paths] == ["density.png", "l0_vs_ev.png"]
  assert all(os.path.getsize(p) > 1000 for p in paths)
