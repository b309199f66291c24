"""NeuroMFA on given checkpoints: sampled neuron-interaction networks, spectra, nulls, E(t).

run(config, workdir) loads every checkpoint of config.checkpoints (a series of one
architecture), builds the released per-block network (jaxcode.analysis.neuromfa.lm_network),
and writes workdir/{config.json, results.json, figures/spectra.png, figures/series.png}.

Checkpoint specs (config.checkpoints, in series order):
  'minilm'            the embedded sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 x 384)
  'hub:ID@REV'        a Hugging Face Hub id and revision, e.g. hub:EleutherAI/pythia-14m@step1000
                      (online only; 'hub:ID' for the default revision)
  'orbax:DIR'         every saved step of a run of this codebase (DIR/checkpoints), whose
                      TrainState params are a jaxcode.models.lm tree (launch.emergence);
                      'orbax:DIR@STEP' for one step
  anything else       a local Hugging Face checkpoint directory (GPT-2, GPT-NeoX or BERT)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jaxcode.analysis import neuromfa as nm
from jaxcode.estimators import multifractal as mf
from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError
from jaxcode.train import checkpoint as ckpt_lib


MAX_QS = 10_000   # q values in one spectrum (the released grid has 61)


def qs_from_config(c) -> np.ndarray:
  lo, hi, step = float(c.q_min), float(c.q_max), float(c.q_step)
  if not (np.isfinite([lo, hi, step]).all() and step > 0 and lo <= hi):
    raise ConfigError(f"q range [{c.q_min}, {c.q_max}] step {c.q_step}: expected finite "
                      f"q_min <= q_max and q_step > 0")
  if not (hi - lo) / step < MAX_QS:
    raise ConfigError(f"q range [{c.q_min}, {c.q_max}] step {c.q_step}: more than {MAX_QS} q "
                      f"values, expected a larger q_step")
  n = int(np.floor((hi - lo) / step + 1e-9)) + 1
  return mf.check_qs(np.round(float(c.q_min) + float(c.q_step) * np.arange(n), 10))


def radii_from_config(c) -> tuple[np.ndarray, tuple | None]:
  """Multihop radius grid (geometric) and fit window; ConfigError when the window is empty."""
  m = c.multihop
  if not (0 < float(m.r_min) < float(m.r_max)) or int(m.n_radii) < 2:
    raise ConfigError(f"multihop radii r_min={m.r_min}, r_max={m.r_max}, n_radii={m.n_radii}: "
                      f"expected 0 < r_min < r_max and n_radii >= 2")
  radii = np.geomspace(float(m.r_min), float(m.r_max), int(m.n_radii))
  window = tuple(float(v) for v in m.window) if m.window else None
  if window is not None and len(window) != 2:
    raise ConfigError(f"multihop.window={m.window}: expected (lo, hi) or () for all radii")
  mf.check_window(radii, window)
  return radii, window


def parse_spec(spec: str) -> tuple[str, str, Any]:
  """(kind, path or id, revision/step); checks local paths exist, before any compute."""
  spec = str(spec)
  if spec == "minilm":
    return "minilm", "", None
  if spec.startswith("hub:"):
    ident, _, rev = spec[4:].partition("@")
    if not ident:
      raise ConfigError(f"checkpoint {spec!r}: expected hub:ID or hub:ID@REVISION")
    return "hub", ident, rev or None
  if spec.startswith("orbax:"):
    path, _, step = spec[6:].partition("@")
    steps = sorted(ckpt_lib.check_directory(os.path.join(path, "checkpoints")))  # numeric order
    if not steps:
      raise ConfigError(f"checkpoint {spec!r}: no orbax checkpoints under {path}/checkpoints")
    if step:
      if not step.isdigit() or int(step) not in steps:
        raise ConfigError(f"checkpoint {spec!r}: step {step!r} not saved, expected one of {steps}")
      return "orbax", path, [int(step)]
    return "orbax", path, steps
  if not os.path.isdir(os.path.expanduser(spec)):
    raise ConfigError(f"checkpoint {spec!r}: not a directory, expected minilm, hub:ID@REV, "
                      f"orbax:RUN_DIR or a local Hugging Face checkpoint directory")
  return "local", spec, None


def orbax_params(run_dir: str, step: int):
  """The params of a saved TrainState, restored without a target (host NumPy)."""
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, "checkpoints")),
                               item_names=("state", "meta"))
  try:
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise ConfigError(f"orbax checkpoint {run_dir}/checkpoints/{step}: unreadable "
                      f"({type(e).__name__})") from None
  finally:
    mngr.close()
  state = out["state"]
  params = state["params"] if isinstance(state, dict) else state.params
  return jax.tree.map(np.asarray, params)


def load_series(specs) -> list[tuple[str, Any]]:
  """[(label, params)] in series order; every spec is parsed before anything loads."""
  if not specs:
    raise ConfigError("checkpoints=(): expected at least one checkpoint spec")
  parsed = [parse_spec(s) for s in specs]
  from jaxcode.models.lm import load_pretrained, minilm_path
  out = []
  for spec, (kind, where, extra) in zip(specs, parsed):
    if kind == "orbax":
      out += [(f"{where}@{s}", orbax_params(where, s)) for s in extra]
      continue
    path = minilm_path() if kind == "minilm" else where
    lm = load_pretrained(path, extra if kind == "hub" else None, tokenizer=False)
    out.append((str(spec), jax.tree.map(np.asarray, lm.params)))
  return out


def step_of(label: str) -> float:
  """The training step a label names (…@123, …step123), else NaN."""
  import re
  m = re.search(r"(?:@|step)(\d+)$", label)
  return float(m.group(1)) if m else float("nan")


def validate(config, workdir: str) -> dict:
  c = config
  if c.mode not in nm.MODES:
    raise ConfigError(f"mode={c.mode!r}: expected one of {nm.MODES}")
  if c.filter_mode not in nm.FILTER_MODES:
    raise ConfigError(f"filter_mode={c.filter_mode}: expected one of {nm.FILTER_MODES}")
  if not isinstance(c.S, int) or c.S < 1:
    raise ConfigError(f"S={c.S!r}: expected a positive integer")
  if not c.seeds:
    raise ConfigError("seeds=(): expected at least one sampling seed")
  if int(c.T) < 2:
    raise ConfigError(f"T={c.T}: expected the paper's distance cut-off >= 2")
  kw = {"qs": qs_from_config(c)}
  if c.mode == "paper":
    kw["T"] = int(c.T)
  else:
    radii, window = radii_from_config(c)
    m = c.multihop
    kw.update(radii=radii, window=window, p=float(m.p), lam=float(m.lam), gamma=float(m.gamma),
              directed=bool(m.directed), normaliser=str(m.normaliser),
              skip_length=float(m.skip_length))
  for spec in c.get("checkpoints", ()):   # the specs' syntax and local paths
    parse_spec(spec)
  workdir_lib.check_workdir(workdir)
  return kw


def fit_window(config, kw) -> dict:
  if config.mode == "paper":
    return {"radii": "integer rounded one-hop distances d = 1/|w| in (1, T] present in the "
            "network (released algorithm), OLS over all of them", "T": int(config.T),
            "min_edges_per_node": mf.PAPER_MIN_EDGES}
  return {"radii": kw["radii"].tolist(), "window": kw["window"]}


def analyse(config, labelled, kw) -> dict:
  labels = [l for l, _ in labelled]
  out = nm.analyse_lm_series([p for _, p in labelled], S=int(config.S),
                             seeds=tuple(int(s) for s in config.seeds),
                             null_seed=int(config.null_seed), mode=config.mode,
                             filter_mode=int(config.filter_mode), residual=bool(config.residual),
                             **kw)
  for lab, rec in zip(labels, out["checkpoints"]):
    rec["label"] = lab
    rec["step"] = step_of(lab)
  out["fit_window"] = fit_window(config, kw)
  return out


def write_figures(out: dict, figdir: str, losses=None) -> list[str]:
  from jaxcode.report import neuromfa as figs
  recs = out["checkpoints"]
  labels = [r["label"] for r in recs]
  paths = [figs.spectra(recs, labels, os.path.join(figdir, "spectra.png"))]
  steps = [r["step"] for r in recs]
  use_steps = all(np.isfinite(steps)) and len(set(steps)) == len(steps)
  if len(recs) > 1 or losses is not None:
    x = steps if use_steps else list(range(len(recs)))
    paths.append(figs.series(x, recs, os.path.join(figdir, "series.png"), losses=losses,
                             xlabel="step" if use_steps else "checkpoint"))
  return paths


def run(config, workdir: str) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "neuromfa", lambda: _run(config, workdir))


def _run(config, workdir: str) -> dict:
  kw = validate(config, workdir)
  labelled = load_series(list(config.checkpoints))
  out = {"experiment": "neuromfa", "variant": config.get("variant", ""),
         **analyse(config, labelled, kw)}
  out["figures"] = write_figures(out, os.path.join(workdir, "figures"))
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
