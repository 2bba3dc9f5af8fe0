"""``python -m mnist_bench [overrides]``: the Hydra app (see mnist_bench.cli)."""

from mnist_bench.cli import main

if __name__ == "__main__":
    main()
