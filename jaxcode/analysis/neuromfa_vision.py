"""NeuroMFA for vision models: the neuron-interaction network (NIN) of a ResNet and of a
denoising MLP, and NeuroMFA's claim (4) (transformers self-organise more than CNNs and
diffusion models) tested against a trained transformer family at matched sizes.

NIN of a convolution (the paper's CNN network is not public, notes/neuromfa.md Open
questions; what we chose): a neuron is a channel; a conv layer with kernel K (kh, kw, I, O)
joins input channel i to output channel j with one edge of weight ||K[:, :, i, j]||_F, the
Frobenius norm of the kernel slice (the total coupling of the two feature maps over the
receptive field; a 1x1 conv or a dense layer gives |w|, the transformer NIN's weight, so
both networks are built by one rule). Distances 1/weight as in analysis.neuromfa. The
ResNet's identity shortcuts are skip edges from a block's input channel to the same
channel of its output (multihop mode only, as the transformer's residual edges). Layers:
input (1 channel) -> stem -> per block: conv1 output, block output -> head logits.

NIN of the denoiser: the conv denoiser (default) as the ResNet (input = the noisy image
and the time-feature channels, head = the 1-channel noise prediction); the MLP denoiser's
dense chain (input = noisy pixels and time features) as the transformer NIN treats dense
kernels, no skips.

Sampling: min(S, width) neurons per layer (a narrow layer is taken whole; the transformer
protocol samples S of every layer), seeded, one sample per seed reused for the series. The
null redraws every sampled *kernel* i.i.d. N(0, std^2) of its full layer (a conv slice
keeps its kh x kw shape, so the null's edges are norms of Gaussian slices) and rebuilds
the edges by the same rule.

claim4(block, workdir, family_points): trains both models per family point (width chosen
so the parameter count is closest) and training seed to log-spaced orbax checkpoints
(shared loop, resumable), analyses each run (workdir/claim4/<run>/nmfa.json, reused), and
compares E at the last checkpoint with the family's: difference transformer - model with a
bootstrap interval (points resampled, then seeds within a point).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.analysis import neuromfa as nm
from jaxcode.data import images as images_lib
from jaxcode.errors import ConfigError, finite, positive_int
from jaxcode.estimators import multifractal as mf
from jaxcode.models import convnet, denoiser
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import loop, optim

KINDS = ("cnn", "denoiser")
COMPARE = ("excess", "raw")


# ------------------------------------------------------------------ networks


@dataclasses.dataclass
class RawNet:
  """A chain of raw kernels (kh, kw, n_l, n_{l+1}) with identity skips between layers."""
  kernels: list            # float64 HWIO; a dense kernel is (1, 1, n_in, n_out)
  names: list              # node-layer names, len(kernels) + 1
  skip_pairs: list         # (layer a, layer b): identity edges a(i) -> b(i)

  @property
  def widths(self) -> list[int]:
    return [self.kernels[0].shape[2]] + [k.shape[3] for k in self.kernels]


def edge_weights(kernel_HWIO: np.ndarray) -> np.ndarray:
  """(I, O) edge weights: the Frobenius norm of each kernel slice K[:, :, i, j]."""
  k = np.asarray(kernel_HWIO, np.float64)
  if k.ndim != 4:
    raise ConfigError(f"kernel of shape {k.shape}: expected (kh, kw, in, out)")
  return np.sqrt((k ** 2).sum(axis=(0, 1)))


def resnet_raw(params) -> RawNet:
  """The ResNet's chain (jaxcode.models.convnet) with its identity shortcuts."""
  layers = convnet.conv_layers(params)
  n_blocks = (len(layers) - 2) // 2
  names = ["input", "stem"] + [f"block{b}.{n}" for b in range(n_blocks)
                               for n in ("conv1", "out")] + ["head"]
  skips = [(2 * b + 1, 2 * b + 3) for b in range(n_blocks)]
  return RawNet([k for _, k in layers], names, skips)


def denoiser_raw(params) -> RawNet:
  """The denoising MLP's dense chain (no skips)."""
  ks = nm.kernels_from_params(params)
  names = ["input"] + [f"hidden{i}" for i in range(len(ks) - 1)] + ["output"]
  return RawNet([k.reshape(1, 1, *k.shape) for k in ks], names, [])


def sample_layers(widths: Sequence[int], S: int, seed: int) -> list[np.ndarray]:
  """min(S, width) sorted neuron indices per layer, seeded."""
  positive_int("S", S)
  rng = np.random.default_rng(seed)
  return [np.arange(w) if w <= S else np.sort(rng.choice(w, S, replace=False))
          for w in widths]


def _skips(raw: RawNet, indices) -> list:
  out = []
  for a, b in raw.skip_pairs:
    _, ia, ib = np.intersect1d(indices[a], indices[b], return_indices=True)
    out.append((a, b, ia, ib))
  return out


def network(raw: RawNet, indices, residual: bool = True) -> nm.Network:
  """The sampled NIN: edge weights of the sampled kernel slices, identity skips."""
  if len(indices) != len(raw.kernels) + 1:
    raise ConfigError(f"indices for {len(indices)} layers: the network has {len(raw.widths)}")
  ks = [edge_weights(k[:, :, indices[l]][:, :, :, indices[l + 1]])
        for l, k in enumerate(raw.kernels)]
  return nm.Network(ks, [float(k.std()) for k in raw.kernels], list(raw.names),
                    list(indices), _skips(raw, indices) if residual else [])


def null_network(raw: RawNet, indices, seed: int, residual: bool = True) -> nm.Network:
  """Every sampled kernel redrawn i.i.d. N(0, std^2 of its full layer), edges rebuilt."""
  rng = np.random.default_rng(seed)
  ks = [edge_weights(rng.normal(0.0, k.std(), (k.shape[0], k.shape[1], len(indices[l]),
                                               len(indices[l + 1]))))
        for l, k in enumerate(raw.kernels)]
  return nm.Network(ks, [float(k.std()) for k in raw.kernels], list(raw.names),
                    list(indices), _skips(raw, indices) if residual else [])


# ------------------------------------------------------------------ spectra over a series


def spectrum_kw(nb) -> dict:
  """Spectrum keywords of a configs/neuromfa.py stage block (paper or multihop)."""
  if nb.mode not in nm.MODES:
    raise ConfigError(f"neuromfa.mode={nb.mode!r}: expected one of {nm.MODES}")
  if nb.filter_mode not in nm.FILTER_MODES:
    raise ConfigError(f"neuromfa.filter_mode={nb.filter_mode}: expected one of {nm.FILTER_MODES}")
  lo, hi, step = (finite(f"neuromfa.{k}", nb[k]) for k in ("q_min", "q_max", "q_step"))
  if not (step > 0 and lo <= hi and (hi - lo) / step < 10_000):
    raise ConfigError(f"q range [{lo}, {hi}] step {step}: expected q_min <= q_max, q_step > 0")
  n = int(np.floor((hi - lo) / step + 1e-9)) + 1
  kw = {"qs": mf.check_qs(np.round(lo + step * np.arange(n), 10))}
  if nb.mode == "paper":
    kw["T"] = positive_int("neuromfa.T", nb.T, 2)
    return kw
  m = nb.multihop
  if not (0 < float(m.r_min) < float(m.r_max)) or int(m.n_radii) < 2:
    raise ConfigError(f"neuromfa.multihop radii ({m.r_min}, {m.r_max}, {m.n_radii}): expected "
                      f"0 < r_min < r_max and n_radii >= 2")
  window = tuple(float(v) for v in m.window) if m.window else None
  kw.update(radii=np.geomspace(float(m.r_min), float(m.r_max), int(m.n_radii)), window=window,
            p=float(m.p), lam=float(m.lam), gamma=float(m.gamma), directed=bool(m.directed),
            normaliser=str(m.normaliser), skip_length=float(m.skip_length))
  mf.check_window(kw["radii"], window)
  return kw


def analyse_raw_series(raws: Sequence[RawNet], nb, kw: dict | None = None) -> dict:
  """alpha0, width, E(t) per checkpoint with the matched null (analysis.neuromfa records)."""
  kw = spectrum_kw(nb) if kw is None else kw
  if not raws:
    raise ConfigError("params_series=[]: expected at least one checkpoint")
  widths = raws[0].widths
  for t, r in enumerate(raws):
    if r.widths != widths:
      raise ConfigError(f"checkpoint {t} has layer widths {r.widths}: expected {widths}")
  seeds = [int(s) for s in nb.seeds]
  if not seeds:
    raise ConfigError("neuromfa.seeds=(): expected at least one sampling seed")
  samples = [sample_layers(widths, int(nb.S), s) for s in seeds]
  residual, mode = bool(nb.residual), str(nb.mode)
  records = []
  for t, raw in enumerate(raws):
    specs = [nm.network_spectrum(network(raw, idx, residual), mode, **kw) for idx in samples]
    nulls = [nm.network_spectrum(null_network(raw, idx, int(nb.null_seed) + 1000 * j + t,
                                              residual), mode, **kw)
             for j, idx in enumerate(samples)]
    records.append(nm._record(specs, nulls, int(nb.filter_mode),
                              [float(k.std()) for k in raw.kernels]))
  nm._add_emergence(records)
  net = network(raws[0], samples[0], residual)
  return {"layers": net.names, "widths": widths, "nodes": net.n_nodes, "edges": net.n_edges,
          "S": int(nb.S), "seeds": seeds, "mode": mode, "checkpoints": records}


# ------------------------------------------------------------------ models and training


def checkpoint_steps(block) -> list[int]:
  """Sorted log-spaced steps (2^k up to steps, and steps), or the block's explicit list."""
  total = positive_int("steps", block.steps)
  if block.checkpoint_steps:
    steps = sorted({int(s) for s in block.checkpoint_steps})
  else:
    steps = sorted({2 ** k for k in range(int(np.log2(total)) + 1)} | {total})
  if steps[0] < 1 or steps[-1] != total:
    raise ConfigError(f"checkpoint_steps={steps}: expected positive steps ending at "
                      f"steps={total}")
  return steps


def load_data(block) -> dict:
  """Training and held-out images of block.data (checked against image_size)."""
  d = block.data
  imgs = images_lib.load(str(d.name), str(d.data_dir) or None)
  images_lib.check_side(imgs, positive_int("data.image_size", d.image_size))
  n_train = int(d.n_train) or len(imgs.x_train)
  n_eval = positive_int("data.n_eval", d.n_eval)
  if not 1 <= n_train <= len(imgs.x_train) or n_eval > len(imgs.x_test):
    raise ConfigError(f"data.n_train={d.n_train}, n_eval={d.n_eval}: the {imgs.name} pools "
                      f"hold {len(imgs.x_train)} and {len(imgs.x_test)} images")
  rng = np.random.default_rng(0)
  tr = np.sort(rng.permutation(len(imgs.x_train))[:n_train])
  te = np.sort(rng.permutation(len(imgs.x_test))[:n_eval])
  return {"name": imgs.name, "side": imgs.side, "x": imgs.x_train[tr], "y": imgs.labels_train[tr],
          "x_eval": imgs.x_test[te], "y_eval": imgs.labels_test[te]}


def n_params(kind: str, width: int, block, side: int) -> int:
  if kind == "cnn":
    return convnet.n_params(width, int(block.cnn.n_blocks))
  dn = block.denoiser
  return denoiser.n_params(width, int(dn.depth), side, int(dn.n_time), str(dn.arch))


def match_width(kind: str, target: int, block, side: int) -> int:
  if kind == "cnn":
    return convnet.width_for_params(target, int(block.cnn.n_blocks))
  dn = block.denoiser
  return denoiser.hidden_for_params(target, int(dn.depth), side, int(dn.n_time),
                                    arch=str(dn.arch))


def make_model(kind: str, width: int, block, side: int):
  if kind == "cnn":
    return convnet.make(width, int(block.cnn.n_blocks), stem_stride=int(block.cnn.stem_stride))
  dn = block.denoiser
  return denoiser.make(width, int(dn.depth), side, int(dn.n_time), str(dn.arch))


def _losses(kind, module, block):
  """(loss(params, batch, key) -> (loss, metrics)) of a model kind."""
  if kind == "cnn":
    def loss(params, b, key):
      logits = module.apply({"params": params}, b["x"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()
      return ce, {"accuracy": (logits.argmax(-1) == b["y"]).mean()}
    return loss
  dn = block.denoiser
  alpha_bar = denoiser.schedule(int(dn.diffusion_steps), float(dn.beta_1), float(dn.beta_T))
  return lambda params, b, key: (denoiser.ddpm_loss(module, params, b["x"], key, alpha_bar), {})


def make_task(kind: str, width: int, block, data: dict, seed: int) -> loop.Task:
  side, batch = data["side"], int(block.data.batch)
  module = make_model(kind, width, block, side)
  loss_fn = _losses(kind, module, block)
  x = data["x"] if kind == "cnn" else data["x"].reshape(len(data["x"]), -1)
  if kind == "cnn":
    init = lambda k: (module.init(k, jnp.zeros((1, side, side)))["params"], {})
  else:
    init = lambda k: (module.init(k, jnp.zeros((1, side * side)), jnp.ones((1,), jnp.int32),
                                  int(block.denoiser.diffusion_steps))["params"], {})

  def host_batch(step):
    rows = np.random.default_rng([seed, int(step)]).integers(0, len(x), batch)
    return {"x": x[rows], "y": data["y"][rows].astype(np.int32)}

  def loss(params, aux, b, key, step):
    value, metrics = loss_fn(params, b, key)
    return value, (metrics, aux)

  tx = optim.make_optimizer(block.optim, int(block.steps))
  return loop.Task(init=init, loss=loss, batch=host_batch, tx=tx,
                   meta={"kind": kind, "width": int(width), "data": data["name"]})


def evaluator(kind: str, task: loop.Task, data: dict):
  """params -> held-out accuracy (cnn) or DDPM loss at a fixed key (denoiser), jitted."""
  x, y = data["x_eval"], data["y_eval"].astype(np.int32)
  if kind == "denoiser":
    x = x.reshape(len(x), -1)

  @jax.jit
  def metric(params):
    value, (metrics, _) = task.loss(params, {}, {"x": x, "y": y}, jax.random.PRNGKey(1234), 0)
    return metrics["accuracy"] if kind == "cnn" else value

  return lambda params: float(metric(params))


def _segment_config(block, seed: int, step: int, n_steps: int):
  seg = ml_collections.ConfigDict(block.to_dict())
  seg.seed, seg.steps = int(seed), int(step)
  seg.checkpoint.every = int(block.steps)
  seg.checkpoint.keep = n_steps + 1
  seg.optim.schedule, seg.optim.warmup_steps = "constant", 0
  return seg


def train_run(task, block, seed: int, run_dir: str, steps: list[int], mesh) -> list:
  """Trains to each checkpoint step in turn; returns the params series [init, step_1, ...]
  (a segment saved by an earlier, interrupted call is restored from its checkpoint)."""
  init = jax.jit(lambda k: task.init(k)[0])     # the loop's step-0 params (same key)
  series = [jax.tree.map(np.asarray, init(jax.random.PRNGKey(int(seed))))]
  done = ckpt_lib.check_directory(os.path.join(run_dir, "checkpoints"))
  for s in steps:
    seg = _segment_config(block, seed, s, len(steps))
    if s in done:      # a finished segment: its checkpoint, not the latest one, is step s
      params = _restore_params(task, seg, run_dir, mesh, s)
    elif any(d > s for d in done):
      raise ConfigError(f"{run_dir}/checkpoints holds steps {done} but not {s}: the series "
                        f"is broken, delete {run_dir} to train it again")
    else:
      params = loop.train(task, seg, run_dir, mesh=mesh).state.params
    series.append(jax.tree.map(np.asarray, params))
  return series


def _restore_params(task, seg, run_dir: str, mesh, step: int):
  """The params of one saved step; keeps every checkpoint (loop.restore_state's checkpointer
  keeps 1 and prunes the others when it closes)."""
  tx = task.tx if task.tx is not None else optim.make_optimizer(seg.optim, int(seg.steps))
  abstract, shardings, _ = loop.create_state(task, tx, int(seg.seed), mesh)
  ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), 1, 10 ** 9, clean=False)
  try:
    state, _ = ckpt.restore(step, ckpt_lib.abstract_with_shardings(abstract, shardings))
  finally:
    ckpt.close()
  return state.params


# ------------------------------------------------------------------ claim (4)


def check_family(family_points) -> list[dict]:
  """The transformer family's points as {'params', 'E', 'E_null'}, checked."""
  if not family_points:
    raise ConfigError("family_points=[]: expected the transformer family's "
                      "[{'params', 'E', 'E_null'}, ...]")
  out = []
  for i, p in enumerate(family_points):
    if not isinstance(p, dict) or not {"params", "E", "E_null"} <= set(p):
      raise ConfigError(f"family_points[{i}]={p!r}: expected a dict with params, E, E_null")
    out.append({"params": positive_int(f"family_points[{i}].params", int(p["params"])),
                "E": finite(f"family_points[{i}].E", p["E"]),
                "E_null": finite(f"family_points[{i}].E_null", p["E_null"])})
  return out


def plan(block, family_points, side: int) -> dict:
  """Validated settings and the runs to make (nothing trained or loaded)."""
  family = check_family(family_points)
  steps = checkpoint_steps(block)
  kw = spectrum_kw(block.neuromfa)
  loop.validate_train_config(block)
  if block.compare not in COMPARE:
    raise ConfigError(f"compare={block.compare!r}: expected one of {COMPARE}")
  seeds = [int(s) for s in block.train_seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f"train_seeds={tuple(block.train_seeds)}: expected distinct seeds")
  positive_int("bootstrap.n", block.bootstrap.n)
  finite("bootstrap.level", block.bootstrap.level, 0.0, 1.0, low_open=True)
  data_axis, _ = parallel.resolve_axis_sizes(block.mesh.data, block.mesh.model,
                                             jax.device_count())
  if positive_int("data.batch", block.data.batch) % data_axis:
    raise ConfigError(f"data.batch={block.data.batch}: expected a multiple of the data axis "
                      f"size {data_axis}")
  cap, low = int(block.max_params), int(block.min_params)
  kept = [p for p in family if (not cap or p["params"] <= cap) and p["params"] >= low]
  if not kept:
    raise ConfigError(f"min_params={low}, max_params={cap}: no family point lies between "
                      f"(they have {sorted(p['params'] for p in family)} parameters), expected "
                      "a range holding at least one")
  runs = [{"kind": k, "target": p["params"], "width": match_width(k, p["params"], block, side),
           "seed": s} for p in kept for k in KINDS for s in seeds]
  for r in runs:
    r["params"] = n_params(r["kind"], r["width"], block, side)
    r["name"] = f"{r['kind']}_w{r['width']}_s{r['seed']}"
  return {"family": kept, "skipped": [p for p in family if p not in kept], "steps": steps,
          "kw": kw, "runs": runs}


def run_one(block, run: dict, workdir: str, data: dict, steps: list[int], kw: dict,
            mesh) -> dict:
  """One model: train (resuming), analyse, write <run>/nmfa.json; reused when complete."""
  folder = os.path.join(workdir, "claim4", run["name"])
  done = _read(os.path.join(folder, "nmfa.json"))
  if done is not None and done.get("steps") == steps:
    return done
  task = make_task(run["kind"], run["width"], block, data, run["seed"])
  series = train_run(task, block, run["seed"], folder, steps, mesh)
  conv = run["kind"] == "cnn" or block.denoiser.arch == "conv"
  build = resnet_raw if conv else denoiser_raw
  out = analyse_raw_series([build(p) for p in series], block.neuromfa, kw)
  metric = "eval_accuracy" if run["kind"] == "cnn" else "eval_ddpm_loss"
  evaluate = evaluator(run["kind"], task, data)
  for rec, s, p in zip(out["checkpoints"], [0] + steps, series):
    rec.update(step=s, **{metric: evaluate(p)})
  out = {**run, "steps": steps, "metric": metric, **out}
  workdir_lib.write_json(os.path.join(folder, "nmfa.json"), out)
  return out


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _summary(res: dict) -> dict:
  last = res["checkpoints"][-1]
  keys = ("kind", "name", "target", "params", "width", "seed", "metric")
  return {**{k: res[k] for k in keys}, "E": last["emergence"], "E_null": last["null_emergence"],
          "alpha0": last["alpha0"], "width_mfa": last["width"],
          "null_alpha0": last["null_alpha0"], "null_width": last["null_width"],
          "final_metric": last[res["metric"]],
          "series": [{k: r[k] for k in ("step", "alpha0", "width", "emergence", "null_emergence",
                                        res["metric"])} for r in res["checkpoints"]]}


def bootstrap_difference(t_P: np.ndarray, v_PR: np.ndarray, n: int, seed: int,
                         level: float) -> dict:
  """mean_i (t_i - mean_r v_ir) with a bootstrap interval: points resampled with
  replacement, then the runs (training seeds) within each drawn point."""
  t_P, v_PR = np.asarray(t_P, np.float64), np.asarray(v_PR, np.float64)
  P, R = v_PR.shape
  delta = float(np.mean(t_P - v_PR.mean(1)))
  rng = np.random.default_rng(seed)
  ip = rng.integers(0, P, (n, P))
  ir = rng.integers(0, R, (n, P, R))
  boot = (t_P[ip] - v_PR[ip[..., None], ir].mean(-1)).mean(-1)
  lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
  return {"delta": delta, "lo": float(lo), "hi": float(hi), "se": float(boot.std()),
          "units": int(P * R)}


def compare(family: list[dict], summaries: list[dict], block) -> tuple[dict, str, str]:
  """(number, verdict, reason) from E at the last checkpoint, transformer minus model."""
  excess = block.compare == "excess"
  value = lambda d: d["E"] - d["E_null"] if excess else d["E"]
  t_P = np.array([value(p) for p in family])
  number = {"metric": "E - E_null at the last checkpoint" if excess else "E at the last "
            "checkpoint", "difference": "transformer - model, mean over matched points",
            "level": float(block.bootstrap.level), "transformer": t_P.tolist()}
  for kind in KINDS:
    v_PR = np.array([[value(s) for s in summaries if s["kind"] == kind and s["target"] == p["params"]]
                     for p in family])
    number[kind] = {"values": v_PR.tolist()}
    if np.all(np.isfinite(v_PR)) and np.all(np.isfinite(t_P)):
      number[kind].update(bootstrap_difference(t_P, v_PR, int(block.bootstrap.n),
                                               int(block.bootstrap.seed),
                                               float(block.bootstrap.level)))
  verdict, reason = _verdict(number)
  return number, verdict, reason


def _verdict(number: dict) -> tuple[str, str]:
  desc = lambda k: (f"{k} {number[k]['delta']:+.3f} [{number[k]['lo']:+.3f}, "
                    f"{number[k]['hi']:+.3f}]")
  missing = [k for k in KINDS if "delta" not in number[k]]
  if missing:
    return "inconclusive", (f"E is not finite for {', '.join(missing)} (no node of the "
                            f"sampled network passed the spectrum's edge filter)")
  few = [k for k in KINDS if number[k]["units"] < 2]
  if few:
    return "inconclusive", (f"one matched model for {', '.join(few)}: no error bar (add "
                            f"train_seeds or family points)")
  text = "; ".join(desc(k) for k in KINDS)
  pct = f"{100 * number['level']:g}%"
  if all(number[k]["lo"] > 0 for k in KINDS):
    return "supported", f"transformer minus model ({number['metric']}), {pct} intervals: {text}"
  below = [k for k in KINDS if number[k]["hi"] < 0]
  if below:
    return "not supported", (f"{', '.join(below)} self-organise more than the transformers "
                             f"({number['metric']}, {pct} intervals): {text}")
  return "inconclusive", f"a {pct} interval includes 0 ({number['metric']}): {text}"


def figure(family: list[dict], summaries: list[dict], path: str) -> str:
  """E(t) of every run (dashed: null) beside E at the last checkpoint against parameters."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
  colours = {"cnn": "tab:blue", "denoiser": "tab:orange", "transformer": "black"}
  for s in summaries:
    st = np.array([max(r["step"], 0.5) for r in s["series"]], np.float64)
    ax0.plot(st, [r["emergence"] for r in s["series"]], "-", color=colours[s["kind"]], lw=1,
             alpha=0.8)
    ax0.plot(st, [r["null_emergence"] for r in s["series"]], "--", color=colours[s["kind"]],
             lw=0.8, alpha=0.6)
  ax0.set_xscale("log")
  ax0.set(xlabel="step (0 drawn at 0.5)", ylabel="E(t)", title="E(t): solid model, dashed null")
  groups = [("transformer", [(p["params"], p["E"], p["E_null"]) for p in family])]
  groups += [(k, [(s["params"], s["E"], s["E_null"]) for s in summaries if s["kind"] == k])
             for k in KINDS]
  for name, pts in groups:
    if pts:
      a = np.array(pts, np.float64)
      ax1.plot(a[:, 0], a[:, 1], "o", color=colours[name], label=name)
      ax1.plot(a[:, 0], a[:, 2], "o", mfc="none", color=colours[name], label=f"{name} null")
  ax1.set_xscale("log")
  ax1.set(xlabel="parameters", ylabel="E at the last checkpoint",
          title="claim 4: E at matched sizes (hollow: null)")
  ax1.legend(fontsize=7)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _check_block_file(workdir: str, block) -> None:
  """A rerun with results-changing differences in the block is refused in one line."""
  path = os.path.join(workdir, "claim4", "block.json")
  old = _read(path)
  if old is not None:
    diff = workdir_lib.first_difference(old, block.to_dict())
    if diff:
      raise ConfigError(f"{workdir}/claim4 holds a run with {diff}; use another workdir")
  workdir_lib.write_json(path, block.to_dict())


def validate(block, params) -> None:
  """Every check claim4 makes before training, from the family's parameter counts alone, so
  the study can refuse bad input before it trains the family (the E values, not known yet,
  enter no check: zeros stand in for them here only)."""
  if str(block.data.name) not in images_lib.NAMES:
    raise ConfigError(f"data.name={block.data.name!r}: expected one of {images_lib.NAMES}")
  plan(block, [{"params": int(p), "E": 0.0, "E_null": 0.0} for p in params],
       positive_int("data.image_size", block.data.image_size))
  load_data(block)


def claim4(block, workdir: str, family_points, mesh=None) -> dict:
  """NeuroMFA claim (4) on a ResNet and a denoiser matched to the transformer family (see
  the module docstring); writes workdir/figures/claim4.png and workdir/claim4/. mesh:
  None = block.mesh."""
  data_cfg = block.data
  if str(data_cfg.name) not in images_lib.NAMES:
    raise ConfigError(f"data.name={data_cfg.name!r}: expected one of {images_lib.NAMES}")
  p = plan(block, family_points, positive_int("data.image_size", data_cfg.image_size))
  data = load_data(block)
  _check_block_file(workdir, block)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(block.mesh)
  summaries = [_summary(run_one(block, r, workdir, data, p["steps"], p["kw"], mesh))
               for r in p["runs"]]
  number, verdict, reason = compare(p["family"], summaries, block)
  rel = os.path.join("figures", "claim4.png")
  figure(p["family"], summaries, os.path.join(workdir, rel))
  out = {"figure": rel, "number": number, "verdict": verdict, "reason": reason,
         "points": summaries, "family": p["family"], "skipped_family_points": p["skipped"],
         "steps": p["steps"], "data": data["name"], "image_size": data["side"]}
  workdir_lib.write_json(os.path.join(workdir, "claim4", "results.json"), out)
  return out
