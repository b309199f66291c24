"""Benchmark: activation extraction throughput, against the matmul rate and HF PyTorch.

On the same packed corpus rows, in one process:
Timed passes of the JAX forward, the matmul and PyTorch alternate (medians of `repeats`),
so a shared machine's changing load affects them alike.
- the jitted JAX forward to the configured hookpoints (what extraction runs): positions/s,
  and its model FLOP/s (matmuls of the blocks it runs, attention scores included) as a
  fraction of the measured rate of a large float32 matmul on the same device;
- the end-to-end extraction (jaxcode.data.activations.extract) into a temporary cache (forward, host copy, dropping special
  tokens, casting, writing chunks and checksums): cached tokens/s;
- when torch is importable: HF transformers' PyTorch model (AutoModel, eval, inference
  mode, eager attention, as many threads as cores, output_hidden_states) loaded from the same
  checkpoint directory (for a GGUF model: the same dequantized float32 weights) on the same
  batches, positions/s and the ratio JAX/PyTorch, with the largest difference of the final
  hidden state as a sanity check;
- the peak resident memory of the process before PyTorch loads (ours) and after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import jax
import numpy as np

from jaxcode.bench import common
from jaxcode.data import activations as acts
from jaxcode.data import corpus as corpus_lib
from jaxcode.pipeline import model as model_lib


def _block0(params) -> dict:
  """The first block's parameter tree (h_0, layer_0 or layers_0, by architecture)."""
  return next(v for k, v in params.items() if k.endswith("_0") and isinstance(v, dict))


def forward_flops(lm, n_blocks: int, batch: int, seq: int) -> float:
  """Matmul FLOPs of n_blocks transformer blocks on [batch, seq] (2 per multiply-add):
  every projection kernel of a block (attention, gated or plain MLP, whatever the family's
  head and KV widths), plus QK^T and PV over the attention width (H * head_dim)."""
  blk = _block0(lm.params)
  weights = sum(int(np.prod(v["kernel"].shape)) for v in blk.values()
                if isinstance(v, dict) and "kernel" in v)
  q = blk.get("q", blk.get("query"))
  width = int(q["kernel"].shape[1]) if q is not None else lm.d_model
  per_token = 2 * weights + 2 * 2 * seq * width
  return float(n_blocks * batch * seq * per_token)


def _batches(packed, batch_size: int, n_batches: int):
  out = []
  for b in range(n_batches):
    s = slice(b * batch_size, (b + 1) * batch_size)
    if packed.input_ids[s].shape[0] < batch_size:
      break
    out.append((packed.input_ids[s], packed.attention_mask[s]))
  return out


def jax_pass(lm, hookpoints, batches):
  """A function running one pass over all batches, one forward at a time (as PyTorch does)."""
  fwd = lm.forward_fn(tuple(hookpoints))
  dev = [(jax.numpy.asarray(i), jax.numpy.asarray(m)) for i, m in batches]
  return lambda: [common.block(fwd(lm.params, i, m)) for i, m in dev]


def extract_pass(lm, hookpoints, packed, batch_size: int, root: str):
  """A function running the whole extraction of `packed` into a fresh cache under root."""
  count = [0]

  def once():
    count[0] += 1
    d = os.path.join(root, f"cache{count[0]}")
    info = acts.extract(lm, packed, hookpoints, d, batch_size=batch_size,
                        rows_per_chunk=batch_size * 2, dtype="float16", progress=False)
    shutil.rmtree(d)
    return info
  return once


def torch_pass(model_dir: str, batches, threads: int):
  """(one pass of HF PyTorch over all batches, its last hidden states of batch 0, info).

  HF's hidden_states[-1] is the final-norm output for decoders and the last block's output
  for BERT: what our `final` hookpoint holds in each. Eager attention (the reference
  implementation), `threads` intra-op threads (as many as XLA uses)."""
  import torch
  import transformers
  torch.set_num_threads(threads)
  model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
  tb = [(torch.from_numpy(i.astype(np.int64)), torch.from_numpy(m.astype(np.int64)))
        for i, m in batches]

  def once():
    with torch.inference_mode():
      return [model(input_ids=i, attention_mask=m, output_hidden_states=True).hidden_states[-1]
              for i, m in tb]
  return once, once()[0].numpy(), (torch.__version__, torch.get_num_threads())


def _peak_rss_gib() -> float:
  """The process's peak resident memory so far (host RAM; on CPU this is the model's)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def interleaved_seconds(fns: dict, repeats: int) -> dict:
  """Median wall seconds of each function, timed in turns (round r runs every function once),
  so that a machine whose load changes affects all of them alike."""
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}


def run(config) -> dict:
  """The measurements of the module docstring, as ratios measured in this run."""
  spec = model_lib.resolve(config.model)
  lm, name = model_lib.load(spec), spec.name
  hookpoints = [f"blocks.{i}.resid_post" for i in range(lm.n_layers)]
  docs = corpus_lib.load_corpus(config.corpus)
  packed = corpus_lib.pack(docs, lm.tokenizer, int(config.seq_len))
  B, T = int(config.batch_size), int(config.seq_len)
  packed = packed.evenly_spaced_rows(B * int(config.n_batches))
  batches = _batches(packed, B, int(config.n_batches))
  positions = len(batches) * B * T
  repeats = int(config.repeats)

  fns = {"jax": jax_pass(lm, hookpoints, batches)}
  fns["jax"]()                                             # compile
  n = int(config.matmul_n)
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda a: a @ a)
  fns["matmul"] = lambda: common.block(mm(a))
  fns["matmul"]()
  out_rss = _peak_rss_gib()           # ours alone, before PyTorch loads its copy
  try:
    import torch  # noqa: F401
    fns["torch"], ref_last, (version, threads) = torch_pass(lm.model_dir, batches,
                                                            os.cpu_count() or 1)
  except ImportError:
    version = None
  sub = packed.take_rows(np.arange(len(batches) * B))
  tmp = tempfile.mkdtemp(prefix="bench_extract_")
  try:
    fns["extract"] = extract_pass(lm, hookpoints, sub, B, tmp)
    cached = fns["extract"]()["tokens"]                    # compiles the casts to float16
    secs = interleaved_seconds(fns, repeats)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  jax_s = secs["jax"]
  flops = forward_flops(lm, lm.n_layers, B, T) * len(batches)
  peak = 2.0 * n ** 3 / secs["matmul"]
  out = {"benchmark": "extract", "device": common.device_summary(), "model": name,
         "seq_len": T, "batch_size": B, "batches": len(batches), "positions": positions,
         "hookpoints": len(hookpoints), "jax_positions_per_s": positions / jax_s,
         "jax_model_flops_per_s": flops / jax_s, "matmul_f32_flops_per_s": peak,
         "jax_fraction_of_matmul_rate": flops / jax_s / peak, "peak_rss_gib": out_rss,
         "extract_cached_tokens": cached, "extract_cached_tokens_per_s": cached / secs["extract"],
         "extract_positions_per_s": positions / secs["extract"],
         "extract_over_jax_forward": secs["jax"] / secs["extract"]}

  if version is None:
    out["torch"] = "not installed: no PyTorch comparison"
    return out
  out.update(_torch_numbers(lm, batches, ref_last, secs, positions), torch=version,
             torch_threads=threads)
  return out


def _torch_numbers(lm, batches, ref_last, secs: dict, positions: int) -> dict:
  """The ratios against HF PyTorch and the final-hidden-state check on batch 0."""
  torch_s = secs["torch"]
  ours = np.asarray(lm.apply(*batches[0], ("final",))["final"])
  m = batches[0][1].astype(bool)
  diff = np.abs(ours[m] - ref_last[m])
  return dict(torch_positions_per_s=positions / torch_s, jax_over_torch=torch_s / secs["jax"],
              extract_over_torch_forward=torch_s / secs["extract"],
              max_abs_diff_last_hidden=float(np.max(diff)),
              max_rel_diff_last_hidden=float(np.max(diff) / np.max(np.abs(ref_last[m]))),
              peak_rss_gib_with_torch=_peak_rss_gib())
