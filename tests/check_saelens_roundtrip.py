"""Interop check against the real SAELens (not part of the pytest suite: it needs torch).

    python tests/check_saelens_roundtrip.py --workdir /tmp/saelens_check \
        [--torch_python /work/torchvenv/bin/python] [--jax_python .venv/bin/python]

(a) SAELens 6.x builds random SAEs and saves them with its own ``save_model``: a TopK training
    SAE with rescale_acts_by_decoder_norm=true, a BatchTopK training SAE, a standard SAE, a
    transcoder, a skip transcoder and a JumpReLU skip transcoder, with its codes and outputs on
    fixed inputs (for the BatchTopK SAE: those of the JumpReLU it saves for inference).  Our
    importer loads each file and the max abs differences are printed.
(b) jaxcode exports three of its SAEs (topk, jumprelu, relu) with metadata; SAELens loads them
    and we check the metadata it kept and its codes against ours.

Each phase runs in the interpreter that has its library; they exchange npz files in --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

D, M, O, N = 24, 64, 20, 96
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
META = dict(model_name="gpt2", hook_name="blocks.3.hook_resid_post", context_size=128,
            dataset_path="corpus/tiny", prepend_bos=True)


def _inputs() -> np.ndarray:
  return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32) * 2


# ------------------------------------------------------------------ phase 1 (torch)

def _randomise(sae, rng):
  import torch
  with torch.no_grad():
    for name, p in sae.named_parameters():
      shape = tuple(p.shape)
      if name == "threshold":
        v = rng.uniform(0.05, 0.4, shape)
      elif name == "W_enc":
        v = rng.standard_normal(shape) / np.sqrt(shape[0])
      elif name == "W_dec":                                        # uneven decoder row norms
        v = rng.standard_normal(shape) * 0.3 * rng.uniform(0.2, 3.0, (shape[0], 1))
      else:
        v = rng.standard_normal(shape) * 0.3
      p.copy_(torch.tensor(v, dtype=p.dtype))


def _saelens_models():
  from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUSkipTranscoder,
                        JumpReLUSkipTranscoderConfig, SkipTranscoder, SkipTranscoderConfig,
                        StandardSAE, StandardSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig,
                        Transcoder, TranscoderConfig)
  from sae_lens.saes.sae import SAEMetadata
  tc_meta = lambda: SAEMetadata(hook_name="blocks.2.ln2.hook_normalized",  # noqa: E731
                                hook_name_out="blocks.2.hook_mlp_out")
  return {
      "topk_rescale": TopKTrainingSAE(TopKTrainingSAEConfig(
          d_in=D, d_sae=M, k=6, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=True)),
      "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(
          d_in=D, d_sae=M, k=6.0, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=True)),
      "standard": StandardSAE(StandardSAEConfig(d_in=D, d_sae=M, apply_b_dec_to_input=True)),
      "transcoder": Transcoder(TranscoderConfig(d_in=D, d_sae=M, d_out=O,
                                                apply_b_dec_to_input=False, metadata=tc_meta())),
      "skip_transcoder": SkipTranscoder(SkipTranscoderConfig(
          d_in=D, d_sae=M, d_out=O, apply_b_dec_to_input=False, metadata=tc_meta())),
      "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(
          d_in=D, d_sae=M, d_out=O, apply_b_dec_to_input=False, metadata=tc_meta())),
  }


def phase_saelens_save(workdir: str):
  import torch
  from sae_lens import SAE
  rng, x = np.random.default_rng(1), _inputs()
  refs = {}
  for name, sae in _saelens_models().items():
    _randomise(sae, rng)
    sae.eval()
    path = os.path.join(workdir, "saelens", name)
    if name == "batchtopk":                  # a threshold as the EMA would leave it
      with torch.no_grad():
        acts = torch.relu((torch.tensor(x) - sae.b_dec) @ sae.W_enc + sae.b_enc) * \
            sae.W_dec.norm(dim=-1)
        sae.topk_threshold = torch.quantile(acts.flatten().double(), 0.9)
    sae.save_model(path)
    ref = sae
    if name == "batchtopk":                  # its inference form: the JumpReLU SAELens saves
      sae.save_inference_model(os.path.join(workdir, "saelens_inference", name))
      ref = SAE.load_from_disk(os.path.join(workdir, "saelens_inference", name))
    with torch.no_grad():
      xt = torch.tensor(x)
      codes = ref.encode(xt)
      refs[name + "/codes"] = codes.to_dense().numpy() if codes.is_sparse else codes.numpy()
      refs[name + "/out"] = ref(xt).numpy() if hasattr(ref, "W_skip") else \
          ref.decode(torch.tensor(refs[name + "/codes"])).numpy()
  np.savez(os.path.join(workdir, "saelens_refs.npz"), **refs)
  print(f"saved {len(refs) // 2} SAELens dictionaries")


def phase_saelens_load_ours(workdir: str):
  import torch
  from sae_lens import SAE
  out, x = {}, _inputs()
  report = {}
  for name in ("topk", "jumprelu", "relu"):
    sae = SAE.load_from_disk(os.path.join(workdir, "ours", name))
    meta = sae.cfg.metadata
    report[name] = {k: meta.get(k) for k in (*META, "sae_lens_version", "label")}
    with torch.no_grad():
      out[name] = sae.encode(torch.tensor(x)).numpy()
  stale = os.path.join(workdir, "ours", "topk_without_version")
  report["topk_without_version"] = {
      k: SAE.load_from_disk(stale).cfg.metadata.get(k) for k in ("model_name", "label")}
  np.savez(os.path.join(workdir, "saelens_on_ours.npz"), **out)
  json.dump(report, open(os.path.join(workdir, "saelens_metadata.json"), "w"), indent=1)
  print("SAELens loaded our exports")


# ------------------------------------------------------------------ phase 2 (jax)

def _unfolded_codes(workdir: str, x) -> np.ndarray:
  """What an importer that ignores rescale_acts_by_decoder_norm returns (the old bug)."""
  from jaxcode.models import sae_io
  from safetensors.numpy import load_file
  w = load_file(os.path.join(workdir, "saelens", "topk_rescale", "sae_weights.safetensors"))
  ext = sae_io.ExternalSAE("topk", w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], k=6,
                           apply_b_dec_to_input=True)
  return np.asarray(sae_io.encode(ext, x))


def phase_ours_load(workdir: str):
  from jaxcode.models import sae_formats, sae_io
  refs, x = np.load(os.path.join(workdir, "saelens_refs.npz")), _inputs()
  rows = []
  for name in sorted({k.split("/")[0] for k in refs.files}):
    ext = sae_formats.load_dictionary(os.path.join(workdir, "saelens", name))
    codes = np.asarray(sae_io.encode(ext, x))
    out = np.asarray(sae_io.decode(ext, codes, x))
    rc, ro = refs[name + "/codes"], refs[name + "/out"]
    rows.append((name, ext.architecture, ext.kind, np.abs(codes - rc).max(),
                 np.abs(codes - rc).max() / np.abs(rc).max(), np.abs(out - ro).max(),
                 np.abs(out - ro).max() / np.abs(ro).max(), (rc > 0).mean()))
  print(f"(a) {'SAELens file':25s} {'as':8s} {'kind':15s} {'codes max|d|':>12s} {'(rel)':>8s} "
        f"{'output max|d|':>13s} {'(rel)':>8s} {'L0/M':>5s}")
  for r in rows:
    print(f"    {r[0]:25s} {r[1]:8s} {r[2]:15s} {r[3]:12.2e} {r[4]:8.1e} {r[5]:13.2e} "
          f"{r[6]:8.1e} {r[7]:5.3f}")
  old, rc = _unfolded_codes(workdir, x), refs["topk_rescale/codes"]
  wrong = (np.abs(old - rc) > 1e-4 * np.abs(rc).max()).any(axis=1).mean()
  print(f"    rescale_acts_by_decoder_norm ignored (old importer): {wrong:.0%} of rows' codes "
        f"wrong, max|d| {np.abs(old - rc).max():.2f}")


def _our_saes():
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, REPO)
  from jaxcode.models import sae
  from tests.sae_fixture import sae_config
  rng = np.random.default_rng(2)
  x = (rng.standard_normal((256, D)) * 3 + 1).astype(np.float32)
  for arch in ("topk", "jumprelu", "relu"):
    cfg = sae_config(architecture=arch, d_in=D, d_sae=M, k=6, normalisation="sqrt_d")
    params, aux = sae.make_init(cfg, x)(jax.random.key(0))
    params, aux = sae.select(params, 0), sae.select(aux, 0)
    params["b_enc"] = jnp.asarray(rng.standard_normal(M) * 0.1, jnp.float32)
    if "threshold" in params:
      params["threshold"] = jnp.asarray(rng.uniform(0.0, 0.3, M), jnp.float32)
    yield arch, cfg, params, aux


def phase_ours_export(workdir: str):
  import jax.numpy as jnp
  from jaxcode.models import sae, sae_io
  x, out = _inputs(), {}
  for arch, cfg, params, aux in _our_saes():
    d = sae_io.export_saelens(os.path.join(workdir, "ours", arch), cfg, params, aux,
                              metadata={"label": f"{arch}_check"}, **META)
    out[arch] = np.asarray(sae.encode(cfg, params, aux, jnp.asarray(x)))
    if arch == "topk":                        # the same file as the old exporter wrote it
      conf = json.load(open(os.path.join(d, "cfg.json")))
      conf["metadata"].pop("sae_lens_version")
      stale = os.path.join(workdir, "ours", "topk_without_version")
      os.makedirs(stale, exist_ok=True)
      json.dump(conf, open(os.path.join(stale, "cfg.json"), "w"))
      shutil.copyfile(os.path.join(d, "sae_weights.safetensors"),
                      os.path.join(stale, "sae_weights.safetensors"))
  np.savez(os.path.join(workdir, "ours_codes.npz"), **out)
  print("exported our SAEs")


def phase_compare_ours(workdir: str):
  ours = np.load(os.path.join(workdir, "ours_codes.npz"))
  theirs = np.load(os.path.join(workdir, "saelens_on_ours.npz"))
  meta = json.load(open(os.path.join(workdir, "saelens_metadata.json")))
  for arch in ("topk", "jumprelu", "relu"):
    d = np.abs(ours[arch] - theirs[arch]).max()
    print(f"(b) our {arch:8s} export in SAELens: codes max|d| {d:.2e} (max code "
          f"{np.abs(ours[arch]).max():.2f}); metadata kept: {meta[arch]}")
  print(f"    same file without sae_lens_version (old exporter): {meta['topk_without_version']}")


# ------------------------------------------------------------------ driver

PHASES = {"saelens_save": phase_saelens_save, "ours_load": phase_ours_load,
          "ours_export": phase_ours_export, "saelens_load_ours": phase_saelens_load_ours,
          "compare_ours": phase_compare_ours}
TORCH_PHASES = ("saelens_save", "saelens_load_ours")


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
