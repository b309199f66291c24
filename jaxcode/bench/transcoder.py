"""Transcoder training-step benchmark (configs/bench/transcoder.py; python -m launch.benchmark).

(a) the per-layer transcoder step (jaxcode.models.sae with transcoder=True; d_in, d_out,
    d_sae, batch, k of the config): achieved FLOP/s over the float32 matmul rate measured in
    the same run, for the ReLU step and both TopK paths (dense decode, sparse gather-and-sum).
    Two FLOP counts: the dense count 2 B M (2 d_in + 3 d_out) (encoder and decoder forward,
    decoder weight and code gradients, encoder weight gradient; the input needs none: 10 B d M
    at d_in = d_out = d, as configs/bench/sae.py counts its dense step), which is also the work
    the ReLU and dense TopK steps do; and, for the sparse TopK path, the work it does:
    2 B M d_in (the dense encoder forward that picks the top k) + 2 B k (d_in + 3 d_out)
    (encoder weight gradient at the k selected rows, decode, decoder weight and code
    gradients).  A skip transcoder adds 4 B d_in d_out to both.
(b) a TopK CLT step (jaxcode.models.clt) over L per-layer TopK transcoder steps at equal
    features per layer (the sum: L times one layer's step), and over the per-layer stack
    trained at once (sae `sources`, one step for all L); the TopK path is the backend's
    faster one (sparse_decode='auto').
(c) the CLT's parameter bytes held by device 0 of a 1 x N (data x model) mesh over its total
    (the per-device share; features sharded over `model` by clt.param_rules), the same for the
    whole train state (parameters, Adam moments, aux), and XLA's compiled per-device bytes of
    the step (arguments + outputs + temporaries - aliased) on that mesh over one device.
    Needs N devices (on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX
    starts); with fewer it is skipped with that reason.
(d) peers, when a peer interpreter is configured (peer_python or $JAXCODE_PEER_PYTHON: torch,
    sae_lens, optionally sparsify): jaxcode/bench/peers_torch.py runs SAELens 6's TopK and
    ReLU SAE training steps, sparsify's TopK transcoder step and one encoder-sized torch
    matmul at the same sizes with torch.set_num_threads(os.cpu_count()); reported as
    peer time over ours (our TopK and ReLU SAE steps, our TopK transcoder step), and SAELens's
    TopK step over the encoder matmul alone.

Every optimizer here is the pipeline's: per-dictionary global-norm clipping
(jaxcode.pipeline.sae.clip_per_sae, clip_norm) then Adam.  Times are the fastest of the
repeats (least disturbed on a shared machine); every ratio is also given by process CPU time,
which other processes on the machine do not inflate.  Ratios only: measured in this run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcode import parallel
from jaxcode.bench import common
from jaxcode.models import clt, sae
from jaxcode.pipeline import sae as sae_stage

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers_torch.py")
PEER_ENV = "JAXCODE_PEER_PYTHON"


# ------------------------------------------------------------------ configs and data

def sae_config(bc, **fields) -> sae.SAEConfig:
  """An SAEConfig from the benchmark's `sae` block (configs/sae.py's schema) with `fields`
  set; the SAEConfig fields the block does not declare keep their dataclass defaults."""
  names = {f.name for f in dataclasses.fields(sae.SAEConfig)}
  s = {k: v for k, v in bc.sae.to_dict().items() if k in names}
  s.update(k_aux=int(s["k_aux"]) or None, matryoshka_widths=tuple(s["matryoshka_widths"]))
  s.update(fields)
  return sae.SAEConfig(**s)


def transcoder_config(bc, d_in: int, d_out: int, d_sae: int, **fields) -> sae.SAEConfig:
  return sae_config(bc, d_in=d_in, d_out=d_out, d_sae=d_sae, transcoder=True,
                    skip=bool(bc.skip), **fields)


def faster_topk_path(bc) -> bool:
  """Whether the `sae` block's sparse_decode ('auto': the backend's measured faster TopK
  path) means the sparse path."""
  return sae_config(bc, d_in=1, d_sae=1).sparse_decode


def clt_config(bc, sparse: bool) -> clt.CLTConfig:
  """The TopK CLT of bc.clt; the fields it shares with the SAE family from the `sae` block."""
  c = bc.clt
  names = {f.name for f in dataclasses.fields(clt.CLTConfig)}
  s = {k: v for k, v in bc.sae.to_dict().items() if k in names}
  s.update(architecture="topk", n_layers=int(c.n_layers), d_in=int(c.d), d_out=int(c.d),
           d_sae=int(c.d_sae), k=int(c.k), k_aux=int(s["k_aux"]) or None,
           skip=bool(bc.skip), sparse_decode=bool(sparse))
  return clt.CLTConfig(**s)


def _pairs(n: int, shape_x: tuple, shape_y: tuple, seed: int = 0) -> dict:
  """A transcoder batch {'x', 'y'} of n random rows (y a fixed linear map of x plus noise)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n,) + shape_x).astype(np.float32)
  w = rng.standard_normal((shape_x[-1], shape_y[-1])).astype(np.float32) / np.sqrt(shape_x[-1])
  y = x @ w + 0.1 * rng.standard_normal((n,) + shape_y).astype(np.float32)
  return {"x": x, "y": y}


def make_tx(bc) -> optax.GradientTransformation:
  return optax.chain(sae_stage.clip_per_sae(float(bc.clip_norm)), optax.adam(float(bc.lr)))


# ------------------------------------------------------------------ timing

def _step_fn(model, cfg, tx, mesh=None):
  """step(params, opt_state, aux, batch, s) -> (params, opt_state, aux, loss): one training
  step of `model` (jaxcode.models.sae or .clt: make_loss, post_update), not jitted."""
  loss = model.make_loss(cfg, mesh)
  post = model.post_update(cfg)

  def step(params, opt, aux, batch, s):
    (l, (_, aux)), g = jax.value_and_grad(loss, has_aux=True)(params, aux, batch, None, s)
    u, opt = tx.update(g, opt, params)
    return post(optax.apply_updates(params, u), aux), opt, aux, l

  return step


def _timed(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of fn() with its result blocked on."""
  t0, c0 = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0, time.process_time() - c0


def matmul_rate(n: int, repeats: int) -> tuple[float, float]:
  """(FLOP/s by wall time, FLOP/s by process CPU time) of the fastest n^3 float32 matmul."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32)
  b = jax.random.normal(k2, (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  wall, cpu = min(_timed(lambda: f(a, b)) for _ in range(max(repeats, 2)))
  return 2.0 * n ** 3 / wall, 2.0 * n ** 3 / max(cpu, 1e-9)


def compiled_bytes(jitted, *args) -> int:
  """XLA's per-device bytes of jitted(*args): arguments + outputs + temporaries - aliased
  (donated); -1 when the backend does not say.  A cache hit once jitted has run on them."""
  m = jitted.lower(*args).compile().memory_analysis()
  if m is None:
    return -1
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def time_step(bc, model, cfg, sample, batch) -> tuple[float, float, int]:
  """(wall, CPU) seconds of the fastest of bc.repeats training steps of `model` on a fixed
  device batch, after bc.warmup untimed ones (state threaded through donation), and the
  step's compiled bytes (compiled_bytes)."""
  tx = make_tx(bc)
  params, aux = model.make_init(cfg, sample)(jax.random.key(0))
  state = [params, tx.init(params), aux]
  del params, aux
  step = jax.jit(_step_fn(model, cfg, tx), donate_argnums=(0, 1, 2))
  dev = jax.tree.map(jnp.asarray, batch)
  samples = []
  for i in range(int(bc.warmup) + int(bc.repeats)):
    box = {}

    def one():
      p, o, a, loss = step(*state, dev, i)
      box["state"] = [p, o, a]
      return loss

    t = _timed(one)
    state[:] = box["state"]
    if i >= int(bc.warmup):
      samples.append(t)
  nbytes = compiled_bytes(step, *state, dev, 0)
  del state
  return (*min(samples), nbytes)


# ------------------------------------------------------------------ (a) per-layer steps

def transcoder_flops(b: int, d_in: int, d_out: int, m: int, k: int, skip: bool):
  """(dense count, sparse TopK work) of one transcoder training step (module docstring)."""
  extra = 4.0 * b * d_in * d_out if skip else 0.0
  dense = 2.0 * b * m * (2 * d_in + 3 * d_out) + extra
  work = 2.0 * b * m * d_in + 2.0 * b * k * (d_in + 3 * d_out) + extra
  return dense, work


def per_layer_steps(bc, out: dict) -> None:
  """(a): ReLU, dense-TopK and sparse-TopK transcoder steps against the matmul rate."""
  d, o, m, b, k = (int(bc[n]) for n in ("d_in", "d_out", "d_sae", "batch", "k"))
  data = _pairs(b, (d,), (o,))
  sample = {n: v[:1024] for n, v in data.items()}
  dense, work = transcoder_flops(b, d, o, m, k, bool(bc.skip))
  rate, rate_cpu = out["matmul_flops_per_s"], out["matmul_flops_per_cpu_s"]
  cfg = transcoder_config(bc, d, o, m, architecture="relu", sparsity_coef=float(bc.relu_coef))
  t_relu, c_relu, _ = time_step(bc, sae, cfg, sample, data)
  out.update(relu_step_s=t_relu, relu_flops_per_s=dense / t_relu,
             relu_fraction_of_matmul=dense / t_relu / rate,
             relu_fraction_of_matmul_by_cpu_time=dense / max(c_relu, 1e-9) / rate_cpu)
  for sparse in (False, True):
    name = "sparse" if sparse else "dense"
    cfg = transcoder_config(bc, d, o, m, architecture="topk", k=k, sparse_decode=sparse)
    t, c, _ = time_step(bc, sae, cfg, sample, data)
    out[f"topk_{name}_step_s"] = t
    out[f"topk_{name}_step_cpu_s"] = c
    for count, flops in (("dense_count", dense), ("work_count", work if sparse else dense)):
      out[f"topk_{name}_fraction_of_matmul_{count}"] = flops / t / rate
      out[f"topk_{name}_fraction_of_matmul_{count}_by_cpu_time"] = (
          flops / max(c, 1e-9) / rate_cpu)
    out[f"topk_{name}_over_relu"] = t / t_relu
    out[f"topk_{name}_over_relu_by_cpu_time"] = c / max(c_relu, 1e-9)
  out["topk_faster_path"] = ("sparse" if out["topk_sparse_step_s"] < out["topk_dense_step_s"]
                             else "dense")
  out["flops_counted"] = {
      "dense_count": "2 B M (2 d_in + 3 d_out): the ReLU and dense TopK steps' matmuls",
      "work_count": "2 B M d_in + 2 B k (d_in + 3 d_out): what the sparse TopK step does"}


# ------------------------------------------------------------------ (b) CLT vs per layer

def clt_vs_per_layer(bc, out: dict) -> None:
  """(b): the TopK CLT step over L per-layer TopK transcoder steps (and their stack)."""
  c = bc.clt
  L, d, m, b, k = int(c.n_layers), int(c.d), int(c.d_sae), int(c.batch), int(c.k)
  sparse = faster_topk_path(bc)
  data = _pairs(b, (L, d), (L, d), seed=1)
  sample = {n: v[:1024] for n, v in data.items()}
  t_clt, c_clt, clt_bytes = time_step(bc, clt, clt_config(bc, sparse), sample, data)
  one = transcoder_config(bc, d, d, m, architecture="topk", k=k, sparse_decode=sparse)
  layer0 = {n: v[:, 0] for n, v in data.items()}
  t_one, c_one, _ = time_step(bc, sae, one, {n: v[:1024] for n, v in layer0.items()}, layer0)
  stack = dataclasses.replace(one, sources=tuple(range(L)))
  t_stack, c_stack, _ = time_step(bc, sae, stack, sample, data)
  dense_one, _ = transcoder_flops(b, d, d, m, k, False)
  dense_clt = L * 4.0 * b * m * d + L * (L + 1) / 2 * 6.0 * b * m * d
  out["clt"] = dict(
      n_layers=L, d=d, d_sae_per_layer=m, batch=b, k=k,
      path="sparse" if sparse else "dense", step_s=t_clt, per_layer_step_s=t_one,
      per_layer_stack_step_s=t_stack, step_bytes=clt_bytes,
      clt_over_sum_of_per_layer=t_clt / (L * t_one),
      clt_over_sum_of_per_layer_by_cpu_time=c_clt / max(L * c_one, 1e-9),
      clt_over_per_layer_stack=t_clt / t_stack,
      clt_over_per_layer_stack_by_cpu_time=c_clt / max(c_stack, 1e-9),
      dense_flop_multiple_of_per_layer_sum=dense_clt / (L * dense_one))


# ------------------------------------------------------------------ (c) CLT memory

def _bytes(tree, device) -> tuple[int, int]:
  """(bytes of every leaf, bytes of the shards that `device` holds)."""
  leaves = [v for v in jax.tree.leaves(tree) if hasattr(v, "addressable_shards")]
  total = sum(int(v.nbytes) for v in leaves)
  on = sum(int(s.data.nbytes) for v in leaves for s in v.addressable_shards
           if s.device == device)
  return total, on


def _sharded_state(cfg, sample, tx, mesh):
  """(params, opt_state, aux) of a CLT created directly with clt.param_rules' shardings."""
  init = clt.make_init(cfg, sample)
  p_abs, a_abs = jax.eval_shape(init, jax.random.key(0))
  sh = (parallel.tree_shardings(p_abs, mesh, clt.param_rules()),
        parallel.tree_shardings(a_abs, mesh, clt.aux_rules()))
  params, aux = jax.jit(init, out_shardings=sh)(jax.random.key(0))
  o_abs = jax.eval_shape(tx.init, params)
  opt = jax.jit(tx.init, out_shardings=parallel.tree_shardings(o_abs, mesh,
                                                               clt.param_rules()))(params)
  return params, opt, aux


def _sharded_step_bytes(bc, cfg, sample, data, mesh) -> int:
  """compiled_bytes of the CLT step with clt.param_rules' shardings on `mesh`."""
  tx = make_tx(bc)
  params, opt, aux = _sharded_state(cfg, sample, tx, mesh)
  sh = jax.tree.map(lambda v: v.sharding, (params, opt, aux))
  batch_sh = parallel.batch_sharding(mesh, 3)
  fn = jax.jit(_step_fn(clt, cfg, tx, mesh), in_shardings=(*sh, batch_sh, None),
               out_shardings=(*sh, parallel.replicated(mesh)), donate_argnums=(0, 1, 2))
  return compiled_bytes(fn, params, opt, aux, jax.device_put(data, batch_sh), 0)


def clt_memory(bc, out: dict) -> None:
  """(c): device 0's share of the CLT's parameters and train state on a 1 x N mesh, and of
  the step's compiled bytes (over (b)'s one-device step: the same CLT)."""
  n = int(bc.clt.model_devices)
  if jax.device_count() < n:
    out["memory"] = {"skipped": f"the per-device share needs {n} devices, this process has "
                     f"{jax.device_count()} (on a CPU: XLA_FLAGS=--xla_force_host_platform_"
                     f"device_count={n} before JAX starts)"}
    return
  cfg = clt_config(bc, faster_topk_path(bc))
  data = _pairs(int(bc.clt.batch), (cfg.n_layers, cfg.d_in), (cfg.n_layers, cfg.d_out), 2)
  sample = {k: v[:1024] for k, v in data.items()}
  dev0 = jax.devices()[0]
  mesh = parallel.make_mesh(1, n, devices=jax.devices()[:n])
  params, opt, aux = _sharded_state(cfg, sample, make_tx(bc), mesh)
  p_total, p_on = _bytes(params, dev0)
  s_total, s_on = _bytes((params, opt, aux), dev0)
  del params, opt, aux
  b_n = _sharded_step_bytes(bc, cfg, sample, data, mesh)
  b_1 = out.get("clt", {}).get("step_bytes", -1)       # (b)'s step: the same CLT, one device
  out["memory"] = dict(
      mesh=f"1 x {n} (data x model)", param_bytes_total=p_total, param_bytes_device0=p_on,
      param_fraction_on_device0=p_on / p_total,
      train_state_bytes_total=s_total, train_state_bytes_device0=s_on,
      train_state_fraction_on_device0=s_on / s_total,
      step_bytes_per_device=b_n, step_bytes_one_device=b_1)
  if b_n > 0 and b_1 > 0:
    out["memory"]["step_bytes_per_device_over_one_device"] = b_n / b_1


# ------------------------------------------------------------------ (d) peers

def peer_python(bc) -> str:
  """The peer interpreter: bc.peer_python, else $JAXCODE_PEER_PYTHON, else ''."""
  return str(bc.peer_python) or os.environ.get(PEER_ENV, "")


def _run_peers(bc, py: str) -> dict:
  """The peer script's JSON (times and skipped peers); raises RuntimeError in one line."""
  args = dict(d_in=int(bc.d_in), d_sae=int(bc.d_sae), batch=int(bc.batch), k=int(bc.k),
              l1=float(bc.relu_coef), repeats=int(bc.repeats), warmup=int(bc.warmup),
              threads=os.cpu_count() or 1,
              device="cuda" if jax.default_backend() == "gpu" else "cpu")
  try:
    proc = subprocess.run([py, PEER_SCRIPT, "--json", json.dumps(args)], capture_output=True,
                          text=True, timeout=float(bc.peer_timeout_s))
  except (OSError, subprocess.TimeoutExpired) as e:
    raise RuntimeError(f"{type(e).__name__}: {e}") from None
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    raise RuntimeError(f"{py} {os.path.basename(PEER_SCRIPT)} failed: {err}")
  return json.loads(lines[-1])


def _ours_for_peers(bc, out: dict) -> dict:
  """Our TopK and ReLU SAE steps at the peers' sizes, and the TopK transcoder step of (a) on
  the backend's faster path: {name: (wall, cpu)}."""
  d, m, b, k = int(bc.d_in), int(bc.d_sae), int(bc.batch), int(bc.k)
  x = _pairs(b, (d,), (1,))["x"]
  topk = sae_config(bc, d_in=d, d_sae=m, architecture="topk", k=k)
  relu = sae_config(bc, d_in=d, d_sae=m, architecture="relu",
                    sparsity_coef=float(bc.relu_coef))
  path = "sparse" if topk.sparse_decode else "dense"
  return {"topk_sae": time_step(bc, sae, topk, x[:1024], x)[:2],
          "relu_sae": time_step(bc, sae, relu, x[:1024], x)[:2],
          "topk_transcoder": (out[f"topk_{path}_step_s"], out[f"topk_{path}_step_cpu_s"]),
          "path": path}


def peers(bc, out: dict) -> None:
  """(d): SAELens's and sparsify's steps over ours (skipped, with its reason, without a peer
  interpreter)."""
  py = peer_python(bc)
  if not py:
    out["peers"] = {"skipped": f"no peer interpreter: set {PEER_ENV} or --config.peer_python "
                    "to a Python with torch and sae_lens"}
    return
  try:
    got = _run_peers(bc, py)
  except RuntimeError as e:
    out["peers"] = {"skipped": " ".join(str(e).split())[:240]}
    return
  ours = _ours_for_peers(bc, out)
  t = got["times"]
  res = {"versions": got["versions"], "threads": got["threads"], "device": got["device"],
         "skipped_peers": got["skipped"], "our_topk_path": ours["path"],
         "seconds": {**{f"ours_{n}": v[0] for n, v in ours.items() if n != "path"},
                     **{n: v["wall_s"] for n, v in t.items()}}}
  pairs = (("saelens_topk", "topk_sae"), ("saelens_relu", "relu_sae"),
           ("sparsify_topk_transcoder", "topk_transcoder"))
  for peer, mine in pairs:
    if peer in t:
      res[f"{peer}_over_ours"] = t[peer]["wall_s"] / ours[mine][0]
      res[f"{peer}_over_ours_by_cpu_time"] = t[peer]["cpu_s"] / max(ours[mine][1], 1e-9)
  if "torch_encoder_matmul" in t:
    mm = t["torch_encoder_matmul"]
    if "saelens_topk" in t:
      res["saelens_topk_over_encoder_matmul"] = t["saelens_topk"]["wall_s"] / mm["wall_s"]
    res["ours_topk_sae_over_encoder_matmul"] = ours["topk_sae"][0] / mm["wall_s"]
  out["peers"] = res


# ------------------------------------------------------------------ run and table

def run(bc) -> dict:
  """Every measurement of the module docstring; returns the ratios (and the times)."""
  rate, rate_cpu = matmul_rate(int(bc.matmul_n), int(bc.repeats))
  out = {"device": common.device_summary(), "threads": os.cpu_count(),
         "d_in": int(bc.d_in), "d_out": int(bc.d_out), "d_sae": int(bc.d_sae),
         "batch": int(bc.batch), "k": int(bc.k), "skip": bool(bc.skip),
         "matmul_n": int(bc.matmul_n), "matmul_flops_per_s": rate,
         "matmul_flops_per_cpu_s": rate_cpu}
  for name, part in (("per-layer steps", per_layer_steps), ("CLT", clt_vs_per_layer),
                     ("CLT memory", clt_memory), ("peers", peers)):
    print(f"transcoder benchmark: {name} ...", file=sys.stderr, flush=True)
    part(bc, out)
  return out


def _fmt(v) -> str:
  return f"{v:.3g}" if isinstance(v, float) else str(v)


def summary(r: dict) -> str:
  """The readable table launch.benchmark prints."""
  rows = [("matmul float32 FLOP/s (wall / CPU time)",
           f"{r['matmul_flops_per_s']:.3g} / {r['matmul_flops_per_cpu_s']:.3g}")]
  rows += [(f"(a) {n} (d_in {r['d_in']}, d_out {r['d_out']}, M {r['d_sae']}, B {r['batch']}, "
            f"k {r['k']})", f"{r[n]:.3g} (by CPU time {r[n + '_by_cpu_time']:.3g})")
           for n in ("relu_fraction_of_matmul", "topk_dense_fraction_of_matmul_dense_count",
                     "topk_sparse_fraction_of_matmul_dense_count",
                     "topk_sparse_fraction_of_matmul_work_count", "topk_dense_over_relu",
                     "topk_sparse_over_relu")]
  c = r["clt"]
  size = f"L {c['n_layers']}, d {c['d']}, M {c['d_sae_per_layer']}/layer, B {c['batch']}"
  rows += [(f"(b) {n} ({size}, {c['path']} TopK k {c['k']})",
            f"{c[n]:.3g} (by CPU time {c[n + '_by_cpu_time']:.3g})")
           for n in ("clt_over_sum_of_per_layer", "clt_over_per_layer_stack")]
  m = r["memory"]
  rows += ([("(c) CLT memory", f"skipped: {m['skipped']}")] if "skipped" in m else
           [(f"(c) {n} on {m['mesh']}", _fmt(m[n])) for n in
            ("param_fraction_on_device0", "train_state_fraction_on_device0",
             "step_bytes_per_device_over_one_device") if n in m])
  p = r["peers"]
  if "skipped" in p:
    rows.append(("(d) peers", f"skipped: {p['skipped']}"))
  else:
    rows += [(f"(d) {n} ({p['threads']} threads)", _fmt(v)) for n, v in p.items()
             if "_over_" in n]
    rows += [(f"(d) {n} not run", why) for n, why in p["skipped_peers"].items()]
  w = max(len(a) for a, _ in rows)
  return "\n".join([f"transcoder benchmark on {r['device']} ({r['threads']} cores)"] +
                   [f"  {a.ljust(w)}  {b}" for a, b in rows])
