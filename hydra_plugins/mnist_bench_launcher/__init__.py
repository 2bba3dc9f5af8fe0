"""mnist-bench's Ray launcher as a Hydra plugin: Hydra instantiates only classes defined under hydra_plugins."""

from mnist_bench.hydra_app.ray_launcher import RayLauncher


class MnistBenchRayLauncher(RayLauncher):
    """``hydra/launcher=ray`` (conf/hydra/launcher/ray.yaml); all of it is in mnist_bench.hydra_app.ray_launcher."""
