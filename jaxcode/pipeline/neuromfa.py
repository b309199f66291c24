"""The NeuroMFA stage: the multifractal spectrum of a series of labelled parameter pytrees
(one architecture), each beside its matched i.i.d. Gaussian null, and E(t) over the series.

`run(labelled, block, folder)` writes folder/results.json (the stage contract,
jaxcode.pipeline.stage); `analyse(block, labelled)` is the same computation without files
(launch.emergence adds its losses to the records before writing). The block is
configs/neuromfa.py's config, passed as it is: S, seeds, null_seed, mode, filter_mode,
residual, T, q_min, q_max, q_step, multihop.{r_min, r_max, n_radii, window, p, lam, gamma,
directed, normaliser, skip_length}; `checkpoints` (the specs below) and `variant` are read
only by the callers that load a series.

Checkpoint specs, loaded by `load_checkpoints` (Hugging Face models through
jaxcode.pipeline.model, so 'minilm' and Hub ids resolve in one place):
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
import re
from typing import Any, Callable

import jax
import numpy as np

from jaxcode.analysis import neuromfa as nm
from jaxcode.errors import ConfigError, positive_int
from jaxcode.estimators import multifractal as mf
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import stage
from jaxcode.train import checkpoint as ckpt_lib

MAX_QS = 10_000   # q values in one spectrum (the released grid has 61)


# ------------------------------------------------------------------ the block

def qs_from_config(c) -> np.ndarray:
  """The q grid q_min, q_min + q_step, ... <= q_max (rounded to 10 decimals)."""
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
  radii_R = np.geomspace(float(m.r_min), float(m.r_max), int(m.n_radii))
  window = tuple(float(v) for v in m.window) if m.window else None
  if window is not None and len(window) != 2:
    raise ConfigError(f"multihop.window={m.window}: expected (lo, hi) or () for all radii")
  mf.check_window(radii_R, window)
  return radii_R, window


def validate(block) -> dict:
  """The block's checks (nothing loaded); returns the spectrum keywords of analyse_lm_series."""
  c = block
  if c.mode not in nm.MODES:
    raise ConfigError(f"mode={c.mode!r}: expected one of {nm.MODES}")
  if c.filter_mode not in nm.FILTER_MODES:
    raise ConfigError(f"filter_mode={c.filter_mode}: expected one of {nm.FILTER_MODES}")
  positive_int("S", c.S)
  if not c.seeds:
    raise ConfigError("seeds=(): expected at least one sampling seed")
  positive_int("T", c.T, 2)                      # the paper's distance cut-off
  kw = {"qs": qs_from_config(c)}
  if c.mode == "paper":
    kw["T"] = int(c.T)
  else:
    radii_R, window = radii_from_config(c)
    m = c.multihop
    kw.update(radii=radii_R, window=window, p=float(m.p), lam=float(m.lam),
              gamma=float(m.gamma), directed=bool(m.directed), normaliser=str(m.normaliser),
              skip_length=float(m.skip_length))
  return kw


# ------------------------------------------------------------------ checkpoints

def parse_spec(spec: str) -> tuple[str, str, Any]:
  """(kind, path or id, revision/steps); checks local paths exist, before any compute."""
  spec = str(spec)
  if spec in model_lib.ALIASES:           # 'minilm': an alias of jaxcode.pipeline.model
    return spec, "", None
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
  if spec.endswith(".gguf") and os.path.isfile(os.path.expanduser(spec)):
    return "local", spec, None            # converted by model_lib.resolve
  if not os.path.isdir(os.path.expanduser(spec)):
    raise ConfigError(f"checkpoint {spec!r}: not a directory, expected "
                      f"{', '.join(model_lib.ALIASES)}, hub:ID@REV, orbax:RUN_DIR, a .gguf file "
                      f"or a local Hugging Face checkpoint directory")
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


def model_params(spec: model_lib.ModelSpec):
  """(label, host params) of a resolved Hugging Face model (no tokenizer)."""
  lm = model_lib.load(spec, tokenizer=False)
  return spec.neuromfa_label, jax.tree.map(np.asarray, lm.params)


def load_checkpoints(specs) -> list[tuple[str, Any]]:
  """[(label, params)] in series order; every spec is parsed before anything loads."""
  if not specs:
    raise ConfigError("checkpoints=(): expected at least one checkpoint spec")
  parsed = [parse_spec(s) for s in specs]
  out = []
  for spec, (kind, where, extra) in zip(specs, parsed):
    if kind == "orbax":
      out += [(f"{where}@{s}", orbax_params(where, s)) for s in extra]
    elif kind == "hub":
      out.append(model_params(model_lib.resolve(where, extra or "")))
    else:
      out.append(model_params(model_lib.resolve(str(spec))))
  return out


def step_of(label: str) -> float:
  """The training step a label names (…@123, …step123), else NaN."""
  m = re.search(r"(?:@|step)(\d+)$", label)
  return float(m.group(1)) if m else float("nan")


# ------------------------------------------------------------------ the stage

def fit_window(block, kw: dict) -> dict:
  """How the spectra were fitted, for results.json."""
  if block.mode == "paper":
    return {"radii": "integer rounded one-hop distances d = 1/|w| in (1, T] present in the "
            "network (released algorithm), OLS over all of them", "T": int(block.T),
            "min_edges_per_node": mf.PAPER_MIN_EDGES}
  return {"radii": kw["radii"].tolist(), "window": kw["window"]}


def analyse(block, labelled, kw: dict | None = None) -> dict:
  """alpha0, width, E(t) and the null per labelled checkpoint (label and step recorded),
  with the fit window; kw: validate(block)'s keywords (computed when None)."""
  kw = validate(block) if kw is None else kw
  out = nm.analyse_lm_series([p for _, p in labelled], S=int(block.S),
                             seeds=tuple(int(s) for s in block.seeds),
                             null_seed=int(block.null_seed), mode=block.mode,
                             filter_mode=int(block.filter_mode), residual=bool(block.residual),
                             **kw)
  for (lab, _), rec in zip(labelled, out["checkpoints"]):
    rec["label"] = lab
    rec["step"] = step_of(lab)
  out["fit_window"] = fit_window(block, kw)
  return out


def run(labelled, block, folder: str, header: dict | None = None,
        figures: Callable[[dict, str], list[str]] | None = None, log: bool = True) -> dict:
  """The stage: folder/results.json = header + analyse(block, labelled) (reused when
  complete); `figures(results, figdir)`, when given, writes folder/figures first and returns
  their paths (recorded under 'figures')."""
  def work() -> dict:
    out = {**(header or {}), **analyse(block, labelled)}
    if figures is not None:
      out["figures"] = figures(out, os.path.join(folder, "figures"))
    return out
  return stage.run_stage("neuromfa", folder, work, log=log)
