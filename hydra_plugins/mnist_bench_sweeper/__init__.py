"""mnist-bench's sweeper as a Hydra plugin: Hydra instantiates only classes defined under hydra_plugins."""

from mnist_bench.hydra_app.sweeper import ValidatingSweeper


class MnistBenchSweeper(ValidatingSweeper):
    """``hydra/sweeper=mnist_bench`` (conf/hydra/sweeper/mnist_bench.yaml); all of it is in ValidatingSweeper."""
