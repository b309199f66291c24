"""The PyTorch peers of the transcoder benchmark, run in a peer interpreter (torch, sae_lens and
optionally sparsify installed), never imported by jaxcode:

  PEER_PYTHON jaxcode/bench/peers_torch.py --json '{"d_in": 768, "d_sae": 16384, ...}'

jaxcode.bench.transcoder starts it as a subprocess and reads the one JSON object it prints
on stdout: per peer, the fastest wall seconds of a training step and the process CPU seconds
of that same step, or the one-line reason it did not run.

Peers (each one training step as its library's trainer runs it):
* saelens_topk, saelens_relu: SAELens 6's TopKTrainingSAE and StandardTrainingSAE, the step
  of sae_lens.training.sae_trainer.SAETrainer._train_step: training_forward_pass on a
  TrainStepInput, the dead-feature bookkeeping, backward, clip_grad_norm_(1.0), Adam step,
  zero_grad, the (constant) learning-rate scheduler's step.
* sparsify_topk_transcoder: sparsify's SparseCoder(transcode=True) as its Trainer runs it
  with optimizer='adam': forward(x, y) (its FVU loss; AuxK off, as its default auxk_alpha=0),
  backward, Adam step, zero_grad, the did-fire bookkeeping.
* torch_encoder_matmul: one [batch, d_in] x [d_in, d_sae] float32 matmul.

Imports only the standard library, numpy, torch, sae_lens and sparsify.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import time

PEERS = ("saelens_topk", "saelens_relu", "sparsify_topk_transcoder", "torch_encoder_matmul")


def _sync(device: str) -> None:
  import torch
  if device == "cuda":
    torch.cuda.synchronize()


def _time(step, device: str, repeats: int, warmup: int) -> dict:
  """Fastest wall seconds of step() and the process CPU seconds of that same call."""
  for _ in range(warmup):
    step()
  _sync(device)
  samples = []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    _sync(device)
    samples.append((time.perf_counter() - t0, time.process_time() - c0))
  wall, cpu = min(samples)
  return {"wall_s": wall, "cpu_s": cpu}


def _data(a: dict, device: str):
  import torch
  g = torch.Generator().manual_seed(0)
  x = torch.randn(a["batch"], a["d_in"], generator=g).to(device)
  y = torch.randn(a["batch"], a["d_in"], generator=g).to(device)
  return x, y


def _saelens_step(a: dict, device: str, arch: str):
  """One SAETrainer._train_step of SAELens's TopK or standard (ReLU) training SAE."""
  import torch
  import sae_lens
  from sae_lens.saes.sae import TrainStepInput
  from sae_lens.training.optim import get_lr_scheduler
  torch.manual_seed(0)
  if arch == "topk":
    sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(
        d_in=a["d_in"], d_sae=a["d_sae"], k=a["k"], device=device))
  else:
    sae = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(
        d_in=a["d_in"], d_sae=a["d_sae"], l1_coefficient=a["l1"], device=device))
  opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
  sched = get_lr_scheduler("constant", optimizer=opt, training_steps=10 ** 6, lr=3e-4,
                           warm_up_steps=0, decay_steps=0, lr_end=3e-5, num_cycles=1)
  coefs = {name: c.value if hasattr(c, "value") else float(c)
           for name, c in sae.get_coefficients().items()}
  since_fired = torch.zeros(a["d_sae"], device=device)
  act_freq = torch.zeros(a["d_sae"], device=device)
  x, _ = _data(a, device)
  state = {"n": 0}

  def step():
    sae.train()
    out = sae.training_forward_pass(step_input=TrainStepInput(
        sae_in=x, dead_neuron_mask=(since_fired > 1000).bool(), coefficients=coefs,
        n_training_steps=state["n"], is_logging_step=False))
    with torch.no_grad():
      firing = out.feature_acts.bool().float()
      did_fire = firing.sum(-2).bool()
      since_fired.add_(1)
      since_fired[did_fire] = 0
      act_freq.add_(firing.sum(0))
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
    state["n"] += 1

  return step


def _sparsify_step(a: dict, device: str):
  """One step of sparsify's Trainer for a TopK transcoder (optimizer='adam', fvu loss)."""
  import torch
  from sparsify import SparseCoder, SparseCoderConfig
  torch.manual_seed(0)
  coder = SparseCoder(a["d_in"], SparseCoderConfig(num_latents=a["d_sae"], k=a["k"],
                                                   transcode=True), device=device)
  opt = torch.optim.Adam(coder.parameters(), lr=2e-4 / (a["d_sae"] / 2 ** 14) ** 0.5)
  x, y = _data(a, device)
  since_fired = torch.zeros(a["d_sae"], dtype=torch.long, device=device)
  did_fire = torch.zeros(a["d_sae"], dtype=torch.bool, device=device)

  def step():
    out = coder(x=x, y=y, dead_mask=None)
    did_fire[out.latent_indices.flatten()] = True
    (out.fvu + out.multi_topk_fvu / 8).backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
      since_fired.add_(a["batch"])
      since_fired[did_fire] = 0
      did_fire.zero_()

  return step


def _matmul(a: dict, device: str):
  import torch
  x, _ = _data(a, device)
  w = torch.randn(a["d_in"], a["d_sae"], device=device)
  return lambda: torch.matmul(x, w)


def _versions() -> dict:
  out = {}
  for name in ("torch", "sae-lens", "eai-sparsify", "numpy"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def run(a: dict) -> dict:
  """Every peer of a['peers'] at a's sizes; times or one-line reasons."""
  import torch
  device = "cuda" if a.get("device") == "cuda" and torch.cuda.is_available() else "cpu"
  torch.set_num_threads(int(a["threads"]))
  makers = {"saelens_topk": lambda: _saelens_step(a, device, "topk"),
            "saelens_relu": lambda: _saelens_step(a, device, "relu"),
            "sparsify_topk_transcoder": lambda: _sparsify_step(a, device),
            "torch_encoder_matmul": lambda: _matmul(a, device)}
  out = {"versions": _versions(), "threads": torch.get_num_threads(), "device": device,
         "times": {}, "skipped": {}}
  for name in a.get("peers", PEERS):
    try:
      step = makers[name]()
      out["times"][name] = _time(step, device, int(a["repeats"]), int(a["warmup"]))
      del step
    except Exception as e:  # one peer missing (e.g. sparsify) leaves the others
      out["skipped"][name] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:240]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", required=True, help="sizes and settings as a JSON object")
  args = p.parse_args(argv)
  a = json.loads(args.json)
  with contextlib.redirect_stdout(sys.stderr):   # libraries' prints stay off the JSON
    result = run(a)
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
  sys.exit(main())
