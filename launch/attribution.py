"""Attribution graph of one prompt through transcoders (default: Gemma 3 270M).

python -m launch.attribution --config=configs/attribution.py --workdir=DIR \
    --config.prompt='The capital of France is' --config.transcoders=TRANSCODER_WORKDIR
"""

from jaxcode import cli

CONFIG = "configs/attribution.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("attribution", CONFIG)
