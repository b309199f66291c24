"""Transcoders, skip transcoders and cross-layer transcoders (default: Gemma 3 270M's MLPs).

python -m launch.train_transcoder --config=configs/transcoder.py:clt --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/transcoder.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("train_transcoder", CONFIG)
