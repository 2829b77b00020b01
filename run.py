"""Entry point: python run.py task=<T> method=<M> [model=<X>] [budget=low|high] [seed=N] ...

See README.md and shared docs/design.md (command-line contract).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from dora.argcheck import check_or_exit


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg) -> None:
    from dora.cli import run_job

    run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    check_or_exit(sys.argv[1:])  # no torch yet: a typo answers in about a second
    from dora.cli import preflight, process_overrides, report_sweep  # imports torch, transformers, peft

    preflight(sys.argv[1:])  # the whole config, every plug-in's schema included
    sys.argv += process_overrides()  # multi-process launches: rank 0 alone writes logs and results
    main()
    report_sweep()  # a sweep whose jobs were refused ends with one line naming them, exit 2
