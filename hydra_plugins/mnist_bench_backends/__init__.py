"""Installed backends' configs on Hydra's search path: each one's ``conf/`` (holding ``backend/NAME.yaml``),
found through its entry point in ``mnist_bench.backends`` (mnist_bench.backends.installed_config_dirs), so
that ``backend=NAME`` composes as a built-in backend does."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from mnist_bench.backends import installed_config_dirs


class MnistBenchBackends(SearchPathPlugin):
    """Appends each installed backend's ``conf/`` after mnist-bench's own, which therefore wins a clash."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for folder in installed_config_dirs():
            search_path.append(provider="mnist-bench-backend", path=f"file://{folder}")
