"""Feature dashboards: a page for every latent of one dictionary (configs/dashboards.py).

run(config, workdir) checks everything first (the model, the dictionary and its width against
the hookpoint, the scan settings, the context window against the sequence length; one line per
bad value, nothing written), then:

  sae/            only with sae='': a TopK SAE trained on the hookpoint (pipeline.sae)
  scan/           the streaming feature scan's resumable state (pipeline.dashboards)
  index.html, latents/page_*.html, latent.html   the pages (report.dashboards)
  neuronpedia/    SAEDashboard batch files and skipped_indexes.json
  results.json
"""

from __future__ import annotations

import os
import sys
import time

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError
from jaxcode.models import sae_formats
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import dashboards as dash
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import sae as sae_stage


def _log(config, msg: str) -> None:
  if config.progress:
    print(f"dashboards: {msg}", file=sys.stderr, flush=True)


def validate(config, workdir: str | None) -> dict:
  """Every check before compute; returns the plan (model, dictionary, packed rows)."""
  spec = model_lib.resolve(config.model, config.revision)
  lm = model_lib.load(spec)
  sae = sae_formats.load_dictionary(os.path.expanduser(config.sae)) if config.sae else None
  hookpoint = sae_stage.own_hookpoint(config.hookpoint, sae)
  if sae is None:
    sae_stage.validate_settings(config.train, "train.")
  dash.check(config.scan, lm, sae, hookpoint, int(config.data.seq_len))
  if isinstance(config.per_page, bool) or not isinstance(config.per_page, int) \
      or config.per_page < 1:
    raise ConfigError(f"per_page={config.per_page!r}: expected a positive integer")
  packed = cache_lib.load_packed(config.data, lm.tokenizer)
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
  return dict(spec=spec, lm=lm, sae=sae, hookpoint=hookpoint, packed=packed)


def run(config, workdir: str, mesh=None) -> dict:
  """Checks, then runs (or finishes) the experiment holding the workdir: a rerun of a finished
  run is a no-op."""
  parallel.maybe_initialize_from_config(config.distributed)
  plan = validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  return workdir_lib.run_owned(workdir, config, "dashboards",
                               lambda: _run(config, workdir, plan, mesh))


def _train(config, workdir: str, plan: dict, mesh):
  """A TopK SAE on the hookpoint, the model computing each batch; returns it loaded."""
  t0 = time.time()
  path, res = sae_stage.train_on_lm(config.train, os.path.join(workdir, "sae"), plan["lm"],
                                    plan["packed"], plan["hookpoint"], mesh)
  _log(config, f"sae: {res['steps']} steps, L0 {res['l0']:.1f}, explained variance "
               f"{res['explained_variance']:.3f} ({time.time() - t0:.0f} s)")
  sae = sae_formats.load_dictionary(path)
  dash.check(config.scan, plan["lm"], sae, plan["hookpoint"], int(config.data.seq_len))
  return sae


def _progress(config):
  if not config.progress:
    return None
  return lambda p, done, n: print(f"\rdashboards: scan pass {p}: {done}/{n} batches", end=""
                                  if done < n else "\n", file=sys.stderr, flush=True)


def write_pages(config, workdir: str, recs: list, summary: dict, model_name: str) -> dict:
  """index.html and the latent pages, and the Neuronpedia batch files."""
  from jaxcode.analysis import dashboard_data
  from jaxcode.report import dashboards as report
  index = report.write_dashboards(recs, workdir, title=f"{model_name} {summary['hookpoint']}",
                                  layer_label=summary["hookpoint"], per_page=int(config.per_page))
  kw = dict(model_id=config.neuronpedia.model_id or model_name, layer=summary["hookpoint"],
            sae_set=config.neuronpedia.sae_set)
  files = dashboard_data.write_neuronpedia(
      os.path.join(workdir, "neuronpedia"), dashboard_data.neuronpedia_batches(recs, **kw),
      dashboard_data.neuronpedia_skipped(recs, **kw))
  return {"index": os.path.relpath(index, workdir),
          "neuronpedia": [os.path.relpath(f, workdir) for f in files]}


def _run(config, workdir: str, plan: dict, mesh) -> dict:
  t0 = time.time()
  sae = plan["sae"] if plan["sae"] is not None else _train(config, workdir, plan, mesh)
  _log(config, f"scan of {sae.d_sae} latents at {plan['hookpoint']} over "
               f"{plan['packed'].n_tokens} tokens")
  recs, summary = dash.records(config.scan, os.path.join(workdir, "scan"), plan["lm"], sae,
                               plan["hookpoint"], plan["packed"], mesh,
                               layer_label=plan["hookpoint"], progress=_progress(config))
  results = {"experiment": "dashboards", "variant": config.variant, "model": plan["spec"].name,
             "sae": config.sae or "sae/export/sae", **summary}
  if parallel.is_main_process():
    results["files"] = write_pages(config, workdir, recs, summary, plan["spec"].name)
    results["seconds_this_invocation"] = time.time() - t0
    workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  _log(config, f"{summary['n_latents']} latents ({summary['dead_fraction']:.1%} dead) -> "
               f"{os.path.join(workdir, 'index.html')}")
  return results
