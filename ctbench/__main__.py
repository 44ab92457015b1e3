"""`python -m ctbench ...` (used by torchrun for distributed pretraining)."""

from ctbench.cli.main import main

if __name__ == "__main__":
    main()
