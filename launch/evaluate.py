"""SAEBench-compatible evaluations of dictionaries: DIR/<eval_type_id>/*.json and DIR/evals.html.

python -m launch.evaluate --config=configs/evaluate.py --workdir=DIR --config.sae=PATH
"""

from jaxcode import cli

CONFIG = "configs/evaluate.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("evaluate", CONFIG)
