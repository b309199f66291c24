"""The attribution graph of one prompt: which transcoder features, through which paths, produce
the model's next-token prediction (configs/attribution.py).

run(config, workdir) checks everything first (settings, the model, the transcoders against it,
the prompt's length, the target tokens; one line per bad value, nothing written), then:

  transcoders/    only with transcoders='': the `train` block's transcoders trained on the
                  model's MLPs (jaxcode.pipeline.attribution.train_transcoders), reused
  graph.json      the pruned graph in the Neuronpedia / circuit-tracer schema
                  (+ graph-metadata.json)
  graph.html      a self-contained page of it (jaxcode.report.graph_html)
  results.json    scores, logit nodes, top paths, sizes, timings
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.analysis import attribution as attr
from jaxcode.errors import ConfigError
from jaxcode.pipeline import attribution as attr_stage
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import transcoder as tc_stage


def _log(config, msg: str) -> None:
  if config.progress:
    print(f"attribution: {msg}", file=sys.stderr, flush=True)


def _check_training(config, lm) -> None:
  t = config.train
  if t.source not in ("cache", "lm"):
    raise ConfigError(f"train.source={t.source!r}: expected 'cache' or 'lm'")
  tc_stage.validate_settings(t)
  tc_stage.check_hooks(t.hook_in, t.hook_out)
  if t.layers:
    raise ConfigError(f"train.layers={tuple(t.layers)}: expected () (attribution needs "
                      "transcoders on every layer)")
  cache_lib.validate_block(t.extract, [t.hook_in.format(layer=0)], 1, where="train.extract.")
  data, model = parallel.resolve_axis_sizes(t.mesh.data, t.mesh.model, jax.device_count())
  tc_stage.validate(t, lm.n_layers, lm.d_model, lm.d_model, data, model)


def validate(config, workdir: str | None) -> dict:
  """Every check before compute; returns the plan (model, transcoders, prompt ids)."""
  if not isinstance(config.prompt, str) or not config.prompt.strip():
    raise ConfigError(f"prompt={config.prompt!r}: expected non-empty text")
  attr_stage.check_settings(config)
  spec = model_lib.resolve(config.model, config.revision)
  lm = model_lib.load(spec)
  plan = dict(spec=spec, lm=lm, coders=None)
  if config.transcoders:
    plan["coders"] = attr_stage.load_transcoders(config.transcoders)
    plan["ids"], plan["targets"] = attr_stage.check_prompt(config, lm, plan["coders"])
  else:
    _check_training(config, lm)
    plan["ids"] = attr.prompt_ids(lm, config.prompt)
    plan["targets"] = [attr.token_id(lm, t) for t in config.target_tokens]
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
  return plan


def run(config, workdir: str, mesh=None) -> dict:
  """Checks, then runs (or finishes) the experiment holding the workdir: a rerun of a finished
  run is a no-op."""
  parallel.maybe_initialize_from_config(config.distributed)
  plan = validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  return workdir_lib.run_owned(workdir, config, "attribution",
                               lambda: _run(config, workdir, plan, mesh))


def _run(config, workdir: str, plan: dict, mesh) -> dict:
  from jaxcode.report import graph_html
  t0 = time.time()
  lm, coders = plan["lm"], plan["coders"]
  trained = None
  if coders is None:
    trained = attr_stage.train_transcoders(config.train, os.path.join(workdir, "transcoders"),
                                           lm, plan["spec"], mesh, log=lambda m: _log(config, m))
    coders = dataclasses.replace(attr_stage.load_transcoders(trained),
                                 scan=f"jaxcode-{config.train.kind}-{plan['spec'].name}")
    attr_stage.check_prompt(config, lm, coders)
  _log(config, f"graph of {plan['ids'].size} tokens through {coders.n_layers} layers "
               f"({coders.activation}, {coders.n_slots} output slot(s) per feature)")
  res, doc = attr_stage.graph_stage(config, workdir, lm, coders, plan["ids"], plan["targets"],
                                    mesh)
  results = {"experiment": "attribution", "variant": config.variant, "model": plan["spec"].name,
             "transcoders": config.transcoders or os.path.relpath(trained, workdir), **res}
  if parallel.is_main_process():
    page = graph_html.write_graph_html(doc, os.path.join(workdir, "graph.html"),
                                       dashboard_url=config.dashboard_url or None)
    results["files"] = ["graph.json", "graph-metadata.json", os.path.basename(page)]
    results["seconds_this_invocation"] = time.time() - t0
    workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
    print(summary(results))
  return results


def summary(results: dict) -> str:
  """The scores and the top paths, for the terminal."""
  s, sp = results["scores"], results["scores_pruned"]
  top = results["logits"][0]
  lines = [f"prompt {results['prompt']!r} -> {top['token']!r} (p={top['p']:.3f})",
           f"graph: {results['n_nodes']} nodes, {results['n_edges']} edges; pruned "
           f"{results['n_nodes_pruned']} nodes, {results['n_edges_pruned']} edges",
           f"replacement score {s['replacement_score']:.3f} (pruned {sp['replacement_score']:.3f})"
           f", completeness {s['completeness_score']:.3f} (pruned "
           f"{sp['completeness_score']:.3f})", "top paths into the predicted token:"]
  for p in results["top_paths"]:
    lines.append(f"  {p['score']:.3f}  " + " -> ".join(p["nodes"]))
  lines.append("top paths from a token (error nodes left out):")
  for p in results["top_token_paths"]:
    lines.append(f"  {p['score']:.3f}  " + " -> ".join(p["nodes"]))
  return "\n".join(lines)
