"""The attribution stages: transcoders (loaded, or trained on the model's MLPs) and one prompt's
attribution graph, pruned and scored.

  load_transcoders(path)      a train_transcoder workdir (its transcoder/export/circuit_tracer),
                              a circuit-tracer CLT or transcoder-set folder, or a Gemma Scope 2
                              CLT folder -> attribution.Coders (raw units)
  train_transcoders(block, folder, lm, spec, mesh)
                              configs/transcoder.py's fields (block) on every layer of lm:
                              folder/extract/ (source 'cache'), folder/train/ (training,
                              per-layer evaluation, exports); reused when complete
  graph_stage(config, folder, lm, coders, mesh)
                              attribution.attribute -> circuit_graph.prune / scores / to_json:
                              folder/graph.json (+ graph-metadata.json) and the results dict
"""

from __future__ import annotations

import os
import re
import sys
import time

import numpy as np

from jaxcode.analysis import attribution as attr
from jaxcode.analysis import circuit_graph
from jaxcode.errors import ConfigError
from jaxcode.models import sae_formats, transcoder_io
from jaxcode.pipeline import transcoder as tc_stage

_OURS = re.compile(r"^blocks\.\d+\.(\w+)$")


def export_dir(path: str) -> str:
  """The dictionary folder a path names: a train_transcoder (or attribution) workdir's
  circuit-tracer export, or the path itself."""
  for sub in (("transcoder", "export", "circuit_tracer"),
              ("transcoders", "train", "export", "circuit_tracer")):
    cand = os.path.join(path, *sub)
    if os.path.isdir(cand):
      return cand
  return path


def _pattern(hook, default: str) -> str:
  m = _OURS.match(hook or "")
  return f"blocks.{{layer}}.{m.group(1)}" if m else default


def load_transcoders(path: str) -> attr.Coders:
  """attribution.Coders of a transcoder set or CLT folder (ConfigError when unknown)."""
  if not isinstance(path, str) or not path:
    raise ConfigError(f"transcoders={path!r}: expected a folder")
  folder = export_dir(os.path.expanduser(path))
  layout = sae_formats.detect_layout(folder)
  scan = os.path.basename(os.path.normpath(path))
  if layout in sae_formats.CLT_LAYOUTS:
    return attr.coders_from_clt(sae_formats.load_clt(folder, layout), scan=scan)
  if layout != "circuit_tracer_plts":
    raise ConfigError(f"transcoders={path!r}: layout {layout!r} is one dictionary: expected a "
                      "transcoder set (layer_{l}.safetensors) or a cross-layer transcoder")
  ts = transcoder_io.load_circuit_tracer_plts(folder)
  first = ts[min(ts)]
  return attr.coders_from_external(
      ts, hook_in=_pattern(first.hook_in, "blocks.{layer}.mlp_in"),
      hook_out=_pattern(first.hook_out, "blocks.{layer}.mlp_out"), scan=scan)


def train_transcoders(block, folder: str, lm, spec, mesh, log=None) -> str:
  """Transcoders of every layer of lm trained per block; returns their export folder."""
  from jaxcode.data import sources
  layers = tuple(range(lm.n_layers))
  hooks = sources.paired_hookpoints(layers, block.hook_in, block.hook_out)
  t0 = time.time()
  src = tc_stage.paired_source(block, os.path.join(folder, "extract"), lm, spec, hooks,
                               len(layers), lm.d_model, lm.d_model, log=log)
  res = tc_stage.train_transcoders(block, os.path.join(folder, "train"), src, mesh, layers, None,
                                   dict(hook_in=block.hook_in, hook_out=block.hook_out,
                                        model_name=spec.name))
  if log:
    log(f"transcoders: {res['steps']} steps, mean FVU {res['mean_fvu']:.3f}, mean L0 "
        f"{res['mean_l0']:.1f} ({time.time() - t0:.0f} s)")
  return os.path.join(folder, "train", "export", "circuit_tracer")


def check_settings(config) -> None:
  """The graph settings of configs/attribution.py, before any compute."""
  for name in ("node_threshold", "edge_threshold", "desired_logit_prob"):
    v = config[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
      raise ConfigError(f"{name}={v!r}: expected a number in (0, 1]")
  for name in ("max_n_logits", "batch_size", "n_paths"):
    v = config[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ConfigError(f"{name}={v!r}: expected a positive integer")
  v = config.max_feature_nodes
  if isinstance(v, bool) or not isinstance(v, int) or v < 0:
    raise ConfigError(f"max_feature_nodes={v!r}: expected an integer >= 0 (0: every active "
                      "feature)")


def check_prompt(config, lm, coders: attr.Coders) -> tuple[np.ndarray, list[int]]:
  """(prompt ids, target token ids) checked against the model and the transcoders."""
  attr.check_coders(lm, coders)
  ids = attr.prompt_ids(lm, config.prompt)
  if ids.size < 2:
    raise ConfigError(f"prompt={config.prompt!r} gives no token after BOS: expected some text")
  return ids, [attr.token_id(lm, t) for t in config.target_tokens]


def _progress(config):
  if not config.progress:
    return None
  t0 = time.time()

  def show(done: int, total: int):
    print(f"\rattribution: feature rows {done}/{total} ({time.time() - t0:.0f} s)",
          end="" if done < total else "\n", file=sys.stderr, flush=True)
  return show


def graph_stage(config, folder: str, lm, coders: attr.Coders, ids, targets, mesh=None) -> dict:
  """The graph of one prompt: writes folder/graph.json (+ graph-metadata.json); returns the
  results (scores of the full and pruned graph, top paths, sizes, timings) and the JSON."""
  t0 = time.time()
  graph = attr.attribute(lm, coders, ids=ids, max_n_logits=int(config.max_n_logits),
                         desired_logit_prob=float(config.desired_logit_prob),
                         batch_size=int(config.batch_size),
                         max_feature_nodes=int(config.max_feature_nodes) or None,
                         target_tokens=targets, mesh=mesh, progress=_progress(config))
  graph.prompt = config.prompt
  t_graph = time.time() - t0
  pruned = circuit_graph.prune(graph, float(config.node_threshold), float(config.edge_threshold))
  slug = re.sub(r"[^a-z0-9]+", "-", config.prompt.lower()).strip("-")[:48] or "graph"
  doc = circuit_graph.to_json(graph, pruned, slug, node_threshold=float(config.node_threshold),
                              edge_threshold=float(config.edge_threshold))
  os.makedirs(folder, exist_ok=True)
  circuit_graph.write_graph_json(os.path.join(folder, "graph.json"), doc)
  paths = attr.top_paths(graph, k=int(config.n_paths))
  res = {"prompt": config.prompt, "prompt_tokens": graph.token_strings,
         "n_tokens": int(ids.size), "scan": graph.scan,
         "logits": [{"token": s, "id": int(t), "p": float(p)} for s, t, p in
                    zip(graph.logit_strings, graph.logit_tokens, graph.logit_probs)],
         "scores": circuit_graph.scores(graph),
         "scores_pruned": circuit_graph.scores(graph, pruned),
         "n_nodes": int(graph.n_nodes), "n_edges": int(np.count_nonzero(graph.adjacency)),
         "n_nodes_pruned": int(pruned.node_mask.sum()),
         "n_edges_pruned": int((pruned.edge_mask & (graph.adjacency != 0)).sum()),
         "top_paths": [{"score": s, "nodes": [attr.node_label(graph, i) for i in p]}
                       for s, p in paths],
         "top_token_paths": [{"score": s, "nodes": [attr.node_label(graph, i) for i in p]}
                             for s, p in attr.top_paths(graph, k=int(config.n_paths),
                                                        errors=False)],
         "attribution": graph.metadata, "seconds_graph": t_graph,
         "seconds_prune_and_write": time.time() - t0 - t_graph}
  return res, doc
