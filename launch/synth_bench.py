"""A ground-truth SAE benchmark after SynthSAEBench.

python -m launch.synth_bench --config=configs/synth_bench.py[:small|:tiny] --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/synth_bench.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("synth_bench", CONFIG)
