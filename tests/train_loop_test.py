"""The shared training loop: resumption, sharding, NaN guard, checkpoints, schedules."""

import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs._train import default_train_config
from jax.sharding import PartitionSpec as P

from jaxcode import parallel
from jaxcode.errors import ConfigError
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import loop, metrics, optim

W_TRUE = np.random.RandomState(0).randn(4, 8).astype(np.float32)


def _task(nan_at=None, **kw):
  def init(key):
    return {"w": 0.1 * jax.random.normal(key, (4, 8))}, {"seen": jnp.zeros((8,))}

  def loss(params, aux, batch, key, step):
    x, y = batch
    noise = 0.01 * jax.random.normal(key, y.shape)   # uses the step key: tests its resumption
    err = jnp.mean((x @ params["w"] - y - noise) ** 2)
    if nan_at is not None:
      err = jnp.where(step >= nan_at, jnp.nan, err)
    return err, ({"mse": err}, {"seen": aux["seen"] + jnp.abs(x).sum()})

  def batch(step):
    r = np.random.RandomState(1000 + step)
    x = r.randn(16, 4).astype(np.float32)
    return x, x @ W_TRUE

  return loop.Task(init=init, loss=loss, batch=batch, param_rules=[("w", P(None, "data"))],
                   aux_rules=[("seen", P("data"))], **kw)


def _cfg(steps=40, every=10):
  c = default_train_config()
  c.steps, c.log_every, c.checkpoint.every = steps, 5, every
  c.optim.name, c.optim.lr, c.optim.schedule, c.optim.warmup_steps = "adam", 0.05, "warmup_cosine", 5
  c.optim.clip_norm = 1.0
  return c


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_sigterm_saves_and_rerun_resumes_bitwise(tmp_path):
  full = loop.train(_task(), _cfg(40), str(tmp_path / "full"))
  part = str(tmp_path / "part")

  def kill_at_17(step, _):
    if step == 17:
      os.kill(os.getpid(), signal.SIGTERM)   # a real signal, caught by the loop

  with pytest.raises(loop.Preempted) as info:
    loop.train(_task(), _cfg(40), part, on_metrics=kill_at_17)
  stopped = info.value.step
  assert 17 <= stopped <= 19   # saved right after the step that saw the signal
  assert ckpt_lib.check_directory(os.path.join(part, "checkpoints"))[-1] == stopped
  resumed = loop.train(_task(), _cfg(40), part)   # the same command again
  assert resumed.resumed_from == stopped and resumed.steps_run == 40 - stopped
  for a, b in zip(_leaves(full.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  # metrics.jsonl holds one history: no duplicated steps after the resume
  steps = [json.loads(l)["step"] for l in open(os.path.join(part, "metrics.jsonl"))]
  assert steps == sorted(set(steps)) and steps[-1] == 40
  assert os.listdir(os.path.join(part, "tensorboard"))
  # saved from a state sharded over 8 devices, restored into a 1-device mesh
  one = loop.restore_state(_task(), _cfg(40), part, mesh=parallel.single_device_mesh())
  assert len(one.params["w"].sharding.device_set) == 1
  for a, b in zip(_leaves(full.state), _leaves(one)):
    np.testing.assert_array_equal(a, b)


def test_sharded_equals_single_device(tmp_path):
  eight = loop.train(_task(), _cfg(15), str(tmp_path / "a"))
  assert len(eight.state.params["w"].sharding.device_set) == 8
  one = loop.train(_task(), _cfg(15), str(tmp_path / "b"), mesh=parallel.single_device_mesh())
  for a, b in zip(_leaves(eight.state), _leaves(one.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_guard_names_step_and_keeps_last_good_checkpoint(tmp_path):
  wd = str(tmp_path / "nan")
  with pytest.raises(metrics.NonFiniteError, match=r"step 24: metric '(loss|grad_norm|mse|param_norm)'"):
    loop.train(_task(nan_at=23), _cfg(40), wd)
  kept = ckpt_lib.check_directory(os.path.join(wd, "checkpoints"))
  assert kept[-1] == 20 and len(kept) > 1
  state = loop.restore_state(_task(), _cfg(40), wd)
  assert int(state.step) == 20
  # restoring only reads: every checkpoint stays (it used to prune to one on close)
  assert ckpt_lib.check_directory(os.path.join(wd, "checkpoints")) == kept
  assert all(np.all(np.isfinite(x)) for x in _leaves(state.params))


def test_incomplete_checkpoint_is_removed_and_the_previous_one_resumed(tmp_path, capfd):
  wd = str(tmp_path / "c")
  loop.train(_task(), _cfg(20), wd)
  complete = ckpt_lib.check_directory(os.path.join(wd, "checkpoints"))
  shutil.rmtree(os.path.join(wd, "checkpoints", "20", "state"))   # as a cut-off deletion leaves
  capfd.readouterr()
  res = loop.train(_task(), _cfg(30), wd)
  assert "removed incomplete" in capfd.readouterr().err
  assert res.resumed_from == complete[-2] and int(res.state.step) == 30


def test_resume_with_other_seed_is_refused(tmp_path):
  wd = str(tmp_path / "s")
  loop.train(_task(), _cfg(10), wd)
  c = _cfg(20)
  c.seed = 7
  with pytest.raises(ConfigError, match="seed=0"):
    loop.train(_task(), c, wd)


def test_schedules_match_hand_values():
  c = default_train_config().optim
  c.lr, c.schedule, c.warmup_steps, c.final_lr_fraction = 1.0, "warmup_cosine", 10, 0.1
  s = optim.make_schedule(c, 110)
  assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-7 and abs(float(s(10)) - 1.0) < 1e-7
  # half way through the 100 decay steps: 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55
  assert abs(float(s(60)) - 0.55) < 1e-6 and abs(float(s(110)) - 0.1) < 1e-6
  c.schedule = "linear"
  s = optim.make_schedule(c, 100)
  assert abs(float(s(50)) - 0.55) < 1e-6
  c.schedule = "bogus"
  with pytest.raises(ConfigError, match="optim.schedule='bogus'"):
    optim.make_schedule(c, 100)


def test_gradient_clipping_from_config():
  c = default_train_config().optim
  c.name, c.lr, c.clip_norm = "sgd", 1.0, 0.5
  tx = optim.make_optimizer(c, 10)
  g = {"a": jnp.array([3.0, 4.0])}
  upd, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(np.asarray(upd["a"]), [-0.3, -0.4], rtol=1e-6)
