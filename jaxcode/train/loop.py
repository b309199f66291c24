"""The one training loop every model in jaxcode uses.

A model brings a `Task` (pure init and loss, a batch that is a pure function of
the step, sharding rules); the loop does the rest: abstract init, state created
already sharded, a jitted step with donated state, metrics of step t fetched
while step t+1 runs, a NaN/Inf guard, orbax checkpoints with a save on
SIGTERM/SIGINT, exact resumption, metrics.jsonl + TensorBoard, progress lines.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcode import parallel
from jaxcode.errors import ConfigError, Preempted
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import metrics as metrics_lib
from jaxcode.train import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: number of updates done
  params: Any           # pytree; gradients are taken w.r.t. this
  opt_state: Any
  aux: Any              # model-owned state without gradient (counters, EMAs, scalars)
  key: jax.Array        # base PRNG key; step t uses fold_in(key, t)


@dataclasses.dataclass(frozen=True)
class Task:
  """What a model brings to the loop (see module docstring)."""
  init: Callable[[jax.Array], tuple[Any, Any]]
  loss: Callable[..., tuple[jax.Array, tuple[dict, Any]]]
  batch: Callable[[int], Any] | None = None
  # Optional: (step, rows) -> rows `rows` of batch(step) (one array).  On a multi-host run
  # each host then reads only its own rows instead of the whole global batch.
  local_batch: Callable[[int, slice], Any] | None = None
  device_batch: Callable[[jax.Array, jax.Array], Any] | None = None
  param_rules: Sequence[tuple[str, P]] = ()
  aux_rules: Sequence[tuple[str, P]] = ()
  batch_spec: Any = P(parallel.DATA)
  tx: optax.GradientTransformation | None = None
  post_update: Callable[[Any, Any], Any] | None = None
  meta: dict = dataclasses.field(default_factory=dict)   # checked on resume


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  metrics: dict            # host copy of the last step's metrics
  resumed_from: int | None
  steps_run: int


def validate_train_config(cfg) -> None:
  if int(cfg.steps) <= 0:
    raise ConfigError(f"steps={cfg.steps}: expected a positive number of updates")
  if int(cfg.log_every) <= 0:
    raise ConfigError(f"log_every={cfg.log_every}: expected a positive interval")
  optim.make_optimizer(cfg.optim, int(cfg.steps))  # validates names and values


def _spec_tree(spec, tree):
  if isinstance(spec, P):
    return jax.tree.map(lambda _: spec, tree)
  return spec


def state_shardings(abstract: TrainState, mesh, task: Task) -> TrainState:
  rep = parallel.replicated(mesh)
  return TrainState(
      step=rep,
      params=parallel.tree_shardings(abstract.params, mesh, task.param_rules),
      opt_state=parallel.tree_shardings(abstract.opt_state, mesh, task.param_rules),
      aux=parallel.tree_shardings(abstract.aux, mesh, task.aux_rules),
      key=rep)


def make_step_fn(task: Task, tx: optax.GradientTransformation):
  """The pure update: (state, batch) -> (state, metrics)."""

  def step_fn(state: TrainState, batch):
    key = jax.random.fold_in(state.key, state.step)
    k_batch, k_loss = jax.random.split(key)
    if task.device_batch is not None:
      batch = task.device_batch(k_batch, state.step)
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    (loss, (metrics, aux)), grads = grad_fn(state.params, state.aux, batch, k_loss, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if task.post_update is not None:
      params = task.post_update(params, aux)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "param_norm": optax.tree.norm(params)}
    out.update(metrics)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, aux=aux), out

  return step_fn


class _SignalFlag:
  """Records SIGTERM/SIGINT instead of dying, so the loop can checkpoint first."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    try:
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handle)
    except ValueError:  # not the main thread: signals cannot be caught here
      self._old = {}
    return self

  def _handle(self, signum, frame):
    self.signum = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)

  def should_stop(self, step: int) -> bool:
    if self.signum is not None:
      return True
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = signal.SIGTERM
        return True
    return False


def create_state(task: Task, tx, seed: int, mesh):
  """(abstract state, shardings, a function making the sharded initial state)."""
  key = jax.random.PRNGKey(seed)

  def init_state(key):
    params, aux = task.init(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), aux=aux, key=key)

  abstract = jax.eval_shape(init_state, key)
  shardings = state_shardings(abstract, mesh, task)
  make = lambda: jax.jit(init_state, out_shardings=shardings)(key)
  return abstract, shardings, make


def _restore_or_init(task: Task, ckpt, abstract, shardings, make_state, meta: dict,
                     workdir: str):
  """(state, restored step or None, the restored run's last metrics)."""

  def same_run(saved):
    for k, v in meta.items():
      if k != "steps" and saved.get(k) != v:
        raise ConfigError(f"workdir {workdir} holds a run with {k}={saved.get(k)!r}, "
                          f"this config has {k}={v!r}; use another workdir")

  restored = ckpt.restore_latest(ckpt_lib.abstract_with_shardings(abstract, shardings),
                                 accept=same_run)
  if restored is None:
    return make_state(), None, {}
  step, state, saved = restored
  return state, step, {k: np.asarray(v) for k, v in saved.get("metrics", {}).items()}


def _batch_feeder(task: Task, mesh) -> tuple[Any, Callable[[int], Any]]:
  """(batch shardings, step -> the step's global batch on the mesh)."""
  if task.batch is None:
    return None, lambda s: None
  probe = jax.tree.map(   # batch 0 on the host (a source may run JAX itself: no tracing)
      lambda v: jax.ShapeDtypeStruct(np.shape(v), jax.dtypes.canonicalize_dtype(
          np.asarray(v).dtype)), task.batch(0))
  batch_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), _spec_tree(task.batch_spec, probe),
                          is_leaf=lambda x: isinstance(x, P))

  def one(x, sh):
    x = np.asarray(x)
    rows = parallel.process_rows(x.shape[0], sh)
    return jax.make_array_from_process_local_data(sh, x[rows], x.shape)

  def feed(s):
    if jax.process_count() > 1 and task.local_batch is not None:
      rows = parallel.process_rows(probe.shape[0], batch_sh)
      return jax.make_array_from_process_local_data(
          batch_sh, np.asarray(task.local_batch(s, rows)), probe.shape)
    host = task.batch(s)
    if jax.process_count() == 1:
      return jax.device_put(host, batch_sh)
    return jax.tree.map(one, host, batch_sh)

  return batch_sh, feed


class _Metrics:
  """Host metrics of each step: NaN guard, metrics.jsonl, progress line, callback."""

  def __init__(self, cfg, workdir: str, start: int, last: dict, ckpt, on_metrics):
    main = parallel.is_main_process()
    self.total, self.log_every = int(cfg.steps), int(cfg.log_every)
    self.writer = metrics_lib.MetricWriter(workdir, enabled=main, resume_step=start)
    self.progress = metrics_lib.Progress(self.total, start, enabled=main)
    self.last, self.ckpt, self.on_metrics = last, ckpt, on_metrics

  def __call__(self, s: int, m) -> None:
    host = jax.device_get(m)
    metrics_lib.check_finite(s, host, self.ckpt.latest_step)
    self.last = host
    if s % self.log_every == 0 or s == self.total:
      self.writer.write(s, host)
      self.progress.report(s, host)
    if self.on_metrics is not None:
      self.on_metrics(s, host)


def _run_steps(step_fn, state, feed, start: int, cfg, ckpt, meta: dict, handle: _Metrics):
  """Steps start..cfg.steps; metrics of step t are fetched while step t+1 runs; a checkpoint
  is written only after its step's metrics pass the guard; a signal saves and stops."""
  total, every = int(cfg.steps), int(cfg.checkpoint.every)
  pending = None
  with _SignalFlag() as flag:
    for s in range(start, total):
      state, m = step_fn(state, feed(s))
      if pending is not None:
        handle(*pending)      # step s-1's metrics, while step s runs
      pending = (s + 1, m)
      stop = flag.should_stop(s + 1)
      if (s + 1) % every == 0 or s + 1 == total or stop:
        handle(*pending)
        pending = None
        ckpt.save(s + 1, state, {**meta, "step": s + 1,
                                 "metrics": metrics_lib.to_json(handle.last)}, force=True)
      if stop:
        ckpt.wait()
        raise Preempted(s + 1, flag.signum)
    if pending is not None:
      handle(*pending)
  return state


def train(task: Task, cfg, workdir: str, mesh=None,
          on_metrics: Callable[[int, dict], None] | None = None) -> TrainResult:
  """Trains `task` for cfg.steps updates in `workdir`, resuming if checkpoints exist."""
  validate_train_config(cfg)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(cfg.mesh)
  total = int(cfg.steps)
  tx = task.tx if task.tx is not None else optim.make_optimizer(cfg.optim, total)
  os.makedirs(workdir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), int(cfg.checkpoint.every),
                               int(cfg.checkpoint.keep), bool(cfg.checkpoint.async_save))
  abstract, shardings, make_state = create_state(task, tx, int(cfg.seed), mesh)
  meta = {"seed": int(cfg.seed), "steps": total, **task.meta}
  state, latest, last = _restore_or_init(task, ckpt, abstract, shardings, make_state, meta,
                                         workdir)
  start = int(jax.device_get(state.step))
  batch_sh, feed = _batch_feeder(task, mesh)
  step_fn = jax.jit(make_step_fn(task, tx), in_shardings=(shardings, batch_sh),
                    out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  handle = _Metrics(cfg, workdir, start, last, ckpt, on_metrics)
  try:
    state = _run_steps(step_fn, state, feed, start, cfg, ckpt, meta, handle)
  finally:
    ckpt.close()
    handle.writer.close()
  return TrainResult(state=state, metrics=handle.last, resumed_from=latest,
                     steps_run=total - start)


def restore_state(task: Task, cfg, workdir: str, mesh=None, step: int | None = None):
  """The TrainState of a finished or interrupted run, on `mesh` (any device count)."""
  mesh = mesh if mesh is not None else parallel.mesh_from_config(cfg.mesh)
  tx = task.tx if task.tx is not None else optim.make_optimizer(cfg.optim, int(cfg.steps))
  abstract, shardings, _ = create_state(task, tx, int(cfg.seed), mesh)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), 1, 1, clean=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise ConfigError(f"no checkpoint in {workdir}/checkpoints")
    state, _ = ckpt.restore(step, ckpt_lib.abstract_with_shardings(abstract, shardings))
  finally:
    ckpt.close()
  return state
