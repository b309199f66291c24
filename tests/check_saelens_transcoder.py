"""Our transcoder exports loaded by the real SAELens (not part of the pytest suite: needs torch).

    python tests/check_saelens_transcoder.py --workdir /tmp/saelens_tc \
        [--torch_python /work/torchvenv/bin/python] [--jax_python .venv/bin/python]

jaxcode builds random ExternalSAEs (a transcoder, a skip transcoder, a JumpReLU transcoder, a
JumpReLU skip transcoder, and a TopK SAE with input/output scales and b_dec subtraction to
fold) and writes them with ``sae_io.export_saelens_external``; SAELens 6 loads each folder with
``SAE.load_from_disk``, and its codes (``encode``) and outputs (``forward``, which adds the skip
term) on fixed inputs are compared with ours.  It also checks the architecture SAELens picked,
d_out, and the hook_name / hook_name_out it kept.  Each phase runs in the interpreter that has
its library; they exchange npz/json files in --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

D, O, M, N = 24, 20, 64, 96
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NAMES = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
         "topk_sae_folded")


def _inputs() -> np.ndarray:
  return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32) * 2


def _external(name: str, rng):
  from jaxcode.models.sae_io import ExternalSAE
  f = lambda *s: rng.standard_normal(s).astype(np.float32)          # noqa: E731
  if name == "topk_sae_folded":
    return ExternalSAE("topk", f(D, M) / np.float32(np.sqrt(D)), f(M) * 0.1, f(M, D), f(D),
                       k=6, apply_b_dec_to_input=True, input_scale=0.3, output_scale=0.3,
                       hook_in="blocks.3.resid_post", hook_out="blocks.3.resid_post")
  act = "jumprelu" if name.startswith("jumprelu") else "standard"
  skip = "skip" in name
  return ExternalSAE(
      act, f(D, M) / np.float32(np.sqrt(D)), f(M) * 0.3, f(M, O) * 0.5, f(O) * 0.2,
      threshold=rng.uniform(0.05, 0.4, M).astype(np.float32) if act == "jumprelu" else None,
      kind="skip_transcoder" if skip else "transcoder",
      W_skip=f(D, O) * 0.3 if skip else None, hook_in="blocks.2.mlp_in",
      hook_out="blocks.2.mlp_out")


def phase_ours_export(workdir: str):
  from jaxcode.models import sae_io
  rng, x, out = np.random.default_rng(3), _inputs(), {}
  for name in NAMES:
    sae = _external(name, rng)
    sae_io.export_saelens_external(os.path.join(workdir, name), sae, {"model_name": "tiny"})
    out[name + "/codes"] = np.asarray(sae_io.encode(sae, x))
    out[name + "/out"] = np.asarray(sae_io.forward(sae, x))
    back = sae_io.load_saelens(os.path.join(workdir, name))       # our own reader, too
    out[name + "/reimport_out"] = np.asarray(sae_io.forward(back, x))
  np.savez(os.path.join(workdir, "ours.npz"), **out)
  print(f"exported {len(NAMES)} dictionaries with export_saelens_external")


def phase_saelens_load(workdir: str):
  import torch
  from sae_lens import SAE
  x, out, report = torch.tensor(_inputs()), {}, {}
  for name in NAMES:
    sae = SAE.load_from_disk(os.path.join(workdir, name))
    sae.eval()
    with torch.no_grad():
      out[name + "/codes"] = sae.encode(x).numpy()
      out[name + "/out"] = sae(x).numpy()
    meta = sae.cfg.metadata
    report[name] = {"class": type(sae).__name__, "d_out": getattr(sae.cfg, "d_out", None),
                    "hook_name": meta.hook_name, "hook_name_out": getattr(meta, "hook_name_out",
                                                                          None),
                    "model_name": meta.model_name}
  np.savez(os.path.join(workdir, "saelens.npz"), **out)
  json.dump(report, open(os.path.join(workdir, "saelens.json"), "w"), indent=1)
  print("SAELens loaded our exports")


def phase_compare(workdir: str):
  ours, theirs = np.load(os.path.join(workdir, "ours.npz")), np.load(
      os.path.join(workdir, "saelens.npz"))
  report = json.load(open(os.path.join(workdir, "saelens.json")))
  print(f"{'export':25s} {'SAELens class':24s} {'codes max|d|':>12s} {'out max|d|':>11s} "
        f"{'(rel)':>8s} {'reimport':>9s} {'L0/M':>5s}  kept")
  for name in NAMES:
    dc = np.abs(ours[name + "/codes"] - theirs[name + "/codes"]).max()
    ro = ours[name + "/out"]
    do = np.abs(ro - theirs[name + "/out"]).max()
    dr = np.abs(ro - ours[name + "/reimport_out"]).max()
    r = report[name]
    print(f"{name:25s} {r['class']:24s} {dc:12.2e} {do:11.2e} {do / np.abs(ro).max():8.1e} "
          f"{dr:9.1e} {(ours[name + '/codes'] > 0).mean():5.3f}  d_out={r['d_out']} "
          f"{r['hook_name']} -> {r['hook_name_out']} ({r['model_name']})")


PHASES = {"ours_export": phase_ours_export, "saelens_load": phase_saelens_load,
          "compare": phase_compare}
TORCH_PHASES = ("saelens_load",)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--torch_python", default="/work/torchvenv/bin/python")
  ap.add_argument("--jax_python", default=os.path.join(REPO, ".venv", "bin", "python"))
  ap.add_argument("--phase", choices=sorted(PHASES))
  args = ap.parse_args()
  if args.phase:
    sys.path.insert(0, REPO)
    PHASES[args.phase](args.workdir)
    return
  os.makedirs(args.workdir, exist_ok=True)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  for phase in PHASES:
    py = args.torch_python if phase in TORCH_PHASES else args.jax_python
    subprocess.run([py, os.path.abspath(__file__), "--workdir", args.workdir, "--phase", phase],
                   check=True, env=env, cwd=REPO)


if __name__ == "__main__":
  main()
