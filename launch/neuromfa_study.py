"""NeuroMFA's claims tested in miniature offline: a GPT-2 family, verdicts, one HTML page.

python -m launch.neuromfa_study --config=configs/neuromfa_study.py:<claim|all|tiny> --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/neuromfa_study.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("neuromfa_study", CONFIG)
