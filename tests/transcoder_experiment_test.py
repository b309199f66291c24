"""launch.train_transcoder end to end: the planted tiny variant, a real (fixture) decoder LM
through the cache and on the fly with the replacement model, SIGKILL resumption, bad input.

References: the planted transcoder's ground truth; the uninterrupted run for the killed and
resumed one; the replacement model's numbers are checked against hand-unrolled forwards in
replacement_eval_test, here only that the stage wires the exported files into it.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import transcoder as tc_configs
from jaxcode import parallel
from jaxcode.errors import ConfigError
from jaxcode.experiments import train_transcoder
from jaxcode.pipeline import model as model_lib
from launch_util import REPO, cpu_env, set_fields

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm", "gemma3_text")


def _cfg(variant="tiny", **over):
  c = tc_configs.get_config(variant)
  c.unlock()
  c.progress = False
  c.optim.warmup_steps = 5
  set_fields(c, **over)
  c.lock()
  return c


def _one_device():
  return parallel.make_mesh(1, 1, devices=jax.devices()[:1])


def _lm_cfg(**over):
  base = dict(kind="plt", source="cache", model=FIX, steps=20, log_every=10, batch_size=32,
              norm_sample_tokens=128, **{
                  "checkpoint.every": 10, "sae.d_sae": 32, "sae.k": 4, "sae.k_aux": 8,
                  "eval.tokens": 128, "extract.corpus": "default:2", "extract.seq_len": 16,
                  "extract.max_tokens": 16 * 16, "extract.batch_size": 8,
                  "extract.rows_per_chunk": 8, "extract.dtype": "float32",
                  "replacement.rows": 2, "replacement.batch_size": 2})
  base.update(over)
  return _cfg("plt", **base)


TINY = dict(steps=160, log_every=40, **{"checkpoint.every": 40})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny variant run once in this process on one device: (workdir, results)."""
  work = tmp_path_factory.mktemp("tiny")
  return work, train_transcoder.run(_cfg(**TINY), str(work), mesh=_one_device())


def test_tiny_variant_writes_results_figures_exports_and_reruns_as_a_no_op(tiny_run):
  work, out = tiny_run
  res = json.load(open(work / "results.json"))
  assert res["kind"] == "clt" and len(res["transcoder"]["per_layer"]) == 3
  for r in res["transcoder"]["per_layer"]:
    assert 0 < r["fvu"] < 0.6 and r["l0"] > 0 and "planted_decoder_cosine" in r
  assert os.path.isfile(work / "transcoder" / "export" / "circuit_tracer" / "config.yaml")
  assert all(os.path.getsize(work / f) > 0 for f in res["figures"])
  t0 = time.time()
  again = train_transcoder.run(_cfg(**TINY), str(work), mesh=_one_device())
  assert again["transcoder"]["per_layer"] == out["transcoder"]["per_layer"]
  assert time.time() - t0 < 30     # reused, not retrained (a generous bound, not a benchmark)


@pytest.mark.parametrize("kind,source", [("clt", "cache"), ("skip", "lm")])
def test_real_decoder_lm_with_replacement_model(kind, source, tmp_path):
  """The fixture Gemma 3 (3 layers, HF-parity tested): pairs from the cache or computed on
  the fly, per-layer metrics, exports read back into the replacement model."""
  c = _lm_cfg(kind=kind, source=source)
  res = train_transcoder.run(c, str(tmp_path), mesh=_one_device())
  assert os.path.isdir(tmp_path / "extract") == (source == "cache")
  layers = [r["layer"] for r in res["transcoder"]["per_layer"]]
  assert layers == [0, 1, 2]   # the fixture has 3 layers
  rep = res["replacement"]
  for key in ("ce_clean", "ce_replacement", "ce_zero", "ce_mean", "kl_replacement",
              "ce_recovered_zero", "ce_recovered_mean"):
    assert np.isfinite(rep[key]), key
  assert rep["layers"] == [0, 1, 2] and len(rep["per_layer"]) == 3
  assert rep["kl_zero"] > 0 and rep["ce_zero"] != rep["ce_clean"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_run, tmp_path):
  """kill -9 of the launch mid-training (after a checkpoint), then the same command: the
  per-layer results equal the uninterrupted run's (one device both, same machine)."""
  args = [sys.executable, "-m", "launch.train_transcoder",
          "--config=configs/transcoder.py:tiny", "--config.progress=False",
          "--config.optim.warmup_steps=5"] + [f"--config.{k}={v}" for k, v in TINY.items()]
  env, cut = cpu_env(1), str(tmp_path / "cut")
  proc = subprocess.Popen(args + [f"--workdir={cut}"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  ckpt = os.path.join(cut, "transcoder", "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= 80 for d in os.listdir(ckpt)):
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
  assert not os.path.isfile(os.path.join(cut, "results.json"))
  subprocess.run(args + [f"--workdir={cut}"], cwd=REPO, env=env, check=True,
                 capture_output=True)
  a = tiny_run[1]["transcoder"]["per_layer"]
  b = json.load(open(os.path.join(cut, "results.json")))["transcoder"]["per_layer"]
  for x, y in zip(a, b):
    for k in ("fvu", "l0", "planted_encoder_cosine", "planted_decoder_cosine"):
      np.testing.assert_allclose(x[k], y[k], rtol=1e-5, err_msg=k)


class _NoMLP:
  """A model whose blocks expose no MLP hookpoints (a stand-in: every family we load has
  them)."""
  n_layers, model_type, has_logits = 2, "toy", True

  def hookpoint_names(self):
    return ["embed"] + [f"blocks.{i}.{k}" for i in range(2) for k in ("resid_pre",
                                                                       "resid_post")]


@pytest.mark.parametrize("over,msg", [
    ({"hook_in": "blocks.{layer}.mlp_out", "hook_out": "blocks.{layer}.mlp_in"},
     "computed before"),
    ({"kind": "clt", "layers": (0, 2)}, "consecutive layers"),
    ({"layers": (0, 5)}, "the model has 3 layers"),
    ({"sae.d_in": 7}, "sae.d_in=7 does not match"),
    ({"mesh.data": 2, "mesh.model": 4, "sae.d_sae": 30}, "model axis 4 does not divide"),
    ({"kind": "mlp"}, "kind='mlp'"),
    ({"source": "disk"}, "source='disk'"),
    ({"kind": "clt", "sae.architecture": "matryoshka"}, "with kind='clt'"),
])
def test_bad_input_fails_in_one_line_before_compute(over, msg, tmp_path):
  c = _lm_cfg(**over)
  with pytest.raises(ConfigError, match=msg) as e:
    train_transcoder.validate(c, str(tmp_path / "w"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "w")


def test_model_without_mlp_hookpoints_is_refused(monkeypatch):
  monkeypatch.setattr(model_lib, "load", lambda spec, **kw: _NoMLP())
  with pytest.raises(ConfigError, match="no such hookpoint") as e:
    train_transcoder.validate(_lm_cfg(), None)
  assert "\n" not in str(e.value)


def test_launch_refuses_bad_input_and_leaves_no_workdir(tmp_path):
  work = tmp_path / "w"
  p = subprocess.run([sys.executable, "-m", "launch.train_transcoder",
                      "--config=configs/transcoder.py:tiny", f"--workdir={work}",
                      "--config.hook_in=blocks.{layer}.resid_post"],
                     cwd=REPO, env=cpu_env(1), capture_output=True, text=True)
  assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
  assert "computed before" in p.stderr and not work.exists()
