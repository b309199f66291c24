"""Toy models of superposition: analysis against analytic polytopes, the published
signatures on small configurations, sharding, multi-process runs, resumption, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import superposition as configs
from jaxcode import parallel
from jaxcode.analysis import superposition as sup
from jaxcode.experiments import superposition as exp
from jaxcode.errors import ConfigError
from launch_util import REPO, cpu_env, free_port



def _polygon(k, m=2):
  """k unit vectors evenly spaced on a circle, embedded in m dimensions: rows of W."""
  ang = 2 * np.pi * np.arange(k) / k
  w = np.zeros((k, m))
  w[:, 0], w[:, 1] = np.cos(ang), np.sin(ang)
  return w


def test_feature_dimensionality_of_uniform_polytopes():
  """Analytic ground truth (Elhage et al. 2022, 'Feature geometry'): antipodal pair 1/2,
  triangle 2/3, pentagon 2/5, tetrahedron 3/4, a dedicated dimension 1."""
  np.testing.assert_allclose(sup.feature_dimensionality(_polygon(2)), 0.5, atol=1e-12)
  np.testing.assert_allclose(sup.feature_dimensionality(_polygon(3)), 2 / 3, atol=1e-12)
  np.testing.assert_allclose(sup.feature_dimensionality(_polygon(5)), 2 / 5, atol=1e-12)
  tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
  np.testing.assert_allclose(sup.feature_dimensionality(tetra), 3 / 4, atol=1e-12)
  eye = np.vstack([np.eye(3), np.zeros((2, 3))])
  np.testing.assert_allclose(sup.feature_dimensionality(eye), [1, 1, 1, 0, 0], atol=1e-12)
  assert sup.dims_per_feature(_polygon(5)) == pytest.approx(2 / 5)
  assert sup.projection_error(eye) == pytest.approx(0.0, abs=1e-12)
  assert sup.projection_error(_polygon(3)) > 0.5
  np.testing.assert_allclose(sup.superposition(_polygon(2)), [1.0, 1.0], atol=1e-12)


def _small(variant, **toy):
  c = configs.get_config(variant)
  for k, v in toy.items():
    c.toy[k] = v
  return c


def test_seed40_signature(tmp_path):
  """40 features, importance 1 -> 0.1, into 5 dimensions: the linear model stores at most
  5 features as an orthogonal projection; the ReLU model stores clearly more at S=0.9."""
  c = _small("seed40", batch=512)
  c.steps, c.optim.lr, c.log_every, c.checkpoint.every = 1500, 0.01, 500, 1500
  r = exp.run(c, str(tmp_path / "s40"))
  for rec in r["instances"]:
    if rec["model"] == "linear":
      assert rec["frobenius_sq"] < 5.1, rec["sparsity"]
      assert rec["projection_error"] < 0.1, rec["sparsity"]
  relu09 = next(x for x in r["instances"] if x["model"] == "relu" and x["sparsity"] == 0.9)
  assert relu09["n_represented"] > 8 and relu09["frobenius_sq"] > 10
  assert relu09["projection_error"] > 1.0
  figs = os.listdir(tmp_path / "s40" / "figures")
  assert {"wtw_and_norms.png", "dims_per_feature.png", "feature_dimensionality.png"} <= set(figs)


def test_feature_geometry_signature(tmp_path):
  """Uniform importance: D* sticks at 1/2 over a range of 1/(1-S) (3 consecutive levels
  within 0.03; the full n=200 run has it between 2 and 3.6, this 10x smaller one a little
  later), falls below 0.2 at 1/(1-S) = 20; D_i cluster at 1/2 and 2/5 (the released
  notebook's signatures, ../shared/notes/geometry.md C.5)."""
  inv = np.array([2.8, 3.0, 3.2, 3.4, 4.2, 4.5, 4.8, 20.0])
  c = _small("feature_geometry", n=60, m=6, batch=512, sparsities=tuple(1 - 1 / inv))
  c.steps, c.optim.lr, c.log_every, c.checkpoint.every = 1500, 0.01, 500, 1500
  r = exp.run(c, str(tmp_path / "fg"))
  s = r["summary"]["relu"]
  dstar = np.array(s["dims_per_feature"])
  near_half = np.abs(dstar[:4] - 0.5) < 0.03
  assert any(near_half[i:i + 3].all() for i in range(2)), dstar
  assert np.all(np.diff(dstar) < 0.02), dstar   # falls with sparsity
  assert dstar[-1] < 0.2, dstar
  dims = np.concatenate([x["feature_dimensionality"] for x in r["instances"]])
  counts = sup.fraction_counts(dims, tol=0.02)
  assert counts["1/2"] >= 20 and counts["2/5"] >= 3, counts


def test_two_feature_loss_equals_monte_carlo_and_the_training_loss():
  """The exact expected loss of the n=2, m=1 ReLU model against two estimates it shares no
  code with, each within 4 standard errors: a NumPy Monte Carlo average over 2M draws of
  the data law, and the training loss (toy.weighted_mse on the project's sampler) over 2M
  draws."""
  import jax.numpy as jnp
  from jaxcode.data import sparse_features
  from jaxcode.models import toy
  rng = np.random.default_rng(0)
  for w, b, dens, rel in [((1.0, -1.0), (-0.1, -0.05), 0.1, 2.0),
                          ((0.9, 0.3), (-0.1, 0.05), 0.5, 0.5),
                          ((0.0, 1.1), (0.2, 0.0), 1.0, 3.0)]:
    exact = sup.two_feature_loss(np.array(w), np.array(b), dens, rel)
    n = 2_000_000
    x = rng.random((n, 2)) * (rng.random((n, 2)) < dens)
    h = x @ np.array(w)
    y = np.maximum(np.outer(h, w) + np.array(b), 0.0)
    per = 0.5 * ((x[:, 0] - y[:, 0]) ** 2 + rel * (x[:, 1] - y[:, 1]) ** 2)
    assert abs(per.mean() - exact) < 4 * per.std() / np.sqrt(n), (w, dens)
    xs = sparse_features.sample(jax.random.key(1), n, 2, 1.0 - dens)
    params = {"W": jnp.array(w, jnp.float32)[None, :, None], "b": jnp.array(b)[None]}
    train = toy.weighted_mse(toy.ToyModel(n=2, m=1, init_std=0.1), params, xs[None],
                             jnp.array([[1.0, rel]]), jnp.array([True]))
    assert abs(float(train[0]) - exact) < 4 * per.std() / np.sqrt(n), (w, dens)


def test_two_feature_theory_has_the_papers_three_phases():
  """The corners of the published phase diagram (Elhage et al. 2022, 'Superposition as a
  phase change', n=2, m=1): dense features, feature 2 ten times less important: not
  represented; ten times more important: it takes the dimension; sparse features (density
  0.01) of equal importance: an antipodal pair."""
  assert sup.two_feature_optimum(1.0, 0.1)["phase"] == 0
  dedicated = sup.two_feature_optimum(1.0, 10.0)
  assert dedicated["phase"] == 1 and abs(abs(dedicated["w"][1]) - 1) < 0.1
  anti = sup.two_feature_optimum(0.01, 1.0)
  assert anti["phase"] == 2 and anti["w"][0] * anti["w"][1] < 0


def test_phase_diagram_matches_theory(tmp_path):
  """Trained models (best of 2 seeds by exact expected loss) land in the theoretical phase
  in four cells well inside each region, and no trained model beats the theoretical
  global minimum."""
  c = configs.get_config("phase")
  c.toy.sparsities, c.toy.relative_importance, c.toy.seeds = (0.0, 0.98), (0.2, 5.0), 2
  c.steps, c.log_every, c.checkpoint.every = 3000, 1000, 3000
  r = exp.run(c, str(tmp_path / "ph"))
  ph = r["phase"]
  assert ph["n_cells"] == 4 and ph["seeds_per_cell"] == 2
  assert [cell["phase_theory"] for cell in ph["cells"]] == [2, 2, 0, 1]   # density, then rel
  assert ph["agreement"] == 1.0, ph["cells"]
  for cell in ph["cells"]:
    assert cell["loss"] >= cell["loss_theory"] * (1 - 1e-4), cell
  assert os.listdir(tmp_path / "ph" / "figures") == ["phase_diagram.png"]


def test_phase_diagram_needs_the_two_feature_relu_model(tmp_path):
  c = configs.get_config("phase")
  c.toy.m = 2
  with pytest.raises(ConfigError, match="toy.m=2.*needs n=2, m=1, models=\\('relu',\\)"):
    exp.run(c, str(tmp_path / "w"))


def test_eight_devices_equal_one_device(tmp_path):
  c = configs.get_config("tiny")
  c.steps = 60
  eight = exp.run(c, str(tmp_path / "eight"), mesh=parallel.make_mesh(1, 8))
  one = exp.run(c, str(tmp_path / "one"), mesh=parallel.single_device_mesh())
  assert eight["device_count"] == 8
  for a, b in zip(eight["instances"], one["instances"]):
    np.testing.assert_allclose(a["feature_norms"], b["feature_norms"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["bias"], b["bias"], rtol=1e-5, atol=1e-6)


def _launch(workdir, *extra, devices=8, wait=True):
  cmd = [sys.executable, "-m", "launch.superposition", "--config=configs/superposition.py:tiny",
         f"--workdir={workdir}", *extra]
  p = subprocess.Popen(cmd, cwd=REPO, env=cpu_env(devices), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  if wait:
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err
  return p


def _final_params(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  return [(x["wtw"], x["bias"]) for x in r["instances"]]


def test_sigterm_then_rerun_is_bitwise_equal_to_uninterrupted(tmp_path):
  steps = ("--config.steps=1000", "--config.checkpoint.every=50", "--config.log_every=10")
  rc, _, err = _launch(tmp_path / "full", *steps)
  assert rc == 0, err
  p = _launch(tmp_path / "cut", *steps, wait=False)
  metrics = tmp_path / "cut" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline:   # wait until it is part-way, then preempt it
    if metrics.exists() and any(json.loads(l)["step"] >= 60 for l in open(metrics)):
      break
    time.sleep(0.2)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 143, err
  assert "rerun the same command to resume" in err
  saved = sorted(int(d) for d in os.listdir(tmp_path / "cut" / "checkpoints") if d.isdigit())
  assert saved and saved[-1] < 1000
  rc, _, err = _launch(tmp_path / "cut", *steps)
  assert rc == 0, err
  assert _final_params(tmp_path / "full") == _final_params(tmp_path / "cut")  # bitwise


def test_two_processes_equal_one_process(tmp_path):
  """jax.distributed over localhost: 2 processes x 4 CPU devices == 1 process x 8 devices."""
  steps = ("--config.steps=40", "--config.checkpoint.every=20")
  rc, _, err = _launch(tmp_path / "single", *steps)
  assert rc == 0, err
  port = free_port()
  procs = [_launch(tmp_path / "multi", *steps, "--config.distributed.enabled=True",
                   f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                   "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                   devices=4, wait=False) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
  with open(tmp_path / "multi" / "results.json") as f:
    multi = json.load(f)
  assert multi["process_count"] == 2 and multi["device_count"] == 8
  for (wa, ba), (wb, bb) in zip(_final_params(tmp_path / "single"), _final_params(tmp_path / "multi")):
    np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ba, bb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("m", 0, "toy.m=0: expected a positive integer"),
    ("n", -3, "toy.n=-3"),
    ("sparsities", (0.5, 1.0), "toy.sparsities contains 1.0: expected numbers in \\[0, 1\\)"),
    ("sparsities", (-0.1,), "toy.sparsities contains -0.1"),
    ("models", ("linear", "gelu"), "toy.models contains 'gelu'"),
])
def test_bad_toy_config_fails_before_compute(tmp_path, field, value, message):
  c = configs.get_config("tiny")
  c.toy[field] = value
  with pytest.raises(ConfigError, match=message):
    exp.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_batch_not_divisible_by_data_axis(tmp_path):
  c = configs.get_config("tiny")
  c.mesh.data, c.mesh.model, c.toy.batch = 8, 1, 60
  with pytest.raises(ConfigError, match="toy.batch=60: expected a multiple of the data axis size 8"):
    exp.run(c, str(tmp_path / "w"))


def test_unwritable_workdir_and_incomplete_checkpoint(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ConfigError, match="is not writable"):
    exp.run(configs.get_config("tiny"), str(blocker / "sub"))
  wd = tmp_path / "run"     # a save cut off before its items were written: removed, not resumed
  os.makedirs(wd / "checkpoints" / "50")
  (wd / "checkpoints" / "50" / "_CHECKPOINT_METADATA").write_text("{}")
  c = configs.get_config("tiny")
  c.steps = 20
  exp.run(c, str(wd))
  assert sorted(os.listdir(wd / "checkpoints")) == ["20"]


def test_unknown_config_field_is_one_line(tmp_path):
  rc, _, err = _launch(tmp_path / "u", "--config.toy.colour=3", devices=1)
  assert rc == 2
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "--config.toy.colour" in lines[0], err
