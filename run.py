"""Entry point: python run.py task=<T> method=<M> [model=<X>] [budget=low|high] [seed=N] ...

See README.md and shared docs/design.md (command-line contract).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from dora.cli import preflight, process_overrides, report_sweep, run_job
from dora.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg) -> None:
    run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    sys.argv += process_overrides()  # multi-process launches: rank 0 alone writes logs and results
    main()
    report_sweep()  # a sweep whose jobs were refused ends with one line naming them, exit 2
