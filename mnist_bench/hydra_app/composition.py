"""A sweep's cells, composed as Hydra composes them but in full only once per choice of config groups, and
the config loader that hands a launcher each cell (with the parent run's id) instead of composing it again."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_bench.config import Config, ConfigError

PARENT_RUN_ENV = "MNIST_BENCH_PARENT_RUN_ID"  # the sweep's parent run, set in each job's process by Hydra
# Each cell's config as the sweeper validated it, by the cell's task overrides, for the jobs a launcher runs
# in the sweeper's own process (the basic one): validating again cost each job 15 ms. Emptied when the sweep
# ends; a job in another process (joblib, Ray) finds it empty and validates its cell itself.
validated_cells: dict[tuple[str, ...], Config] = {}


def grid(overrides: Sequence[Override]) -> list[list[str]]:
    """Every combination of the sweep's overrides (``a=1,2 b=range(3)``), one list of overrides per job."""
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(
                f"{override.input_line}: a sweep takes a list or a range (lr=0.1,0.5 or seed=range(5)), not an interval"
            )
    return [list(job) for job in itertools.product(*choices.values())]


class CellComposer:
    """Composes a sweep's cells as Hydra's ``load_sweep_config`` does, but in full only once per choice of
    config groups (``backend=tf``, ``+experiment=fast``). A cell that differs from such a one only in plain
    values (``lr=0.1`` against ``lr=0.5``) is a copy of it with those values set, as Hydra sets them after
    composing: 0.01 s a cell against Hydra's 0.2-0.3 s, which a sweep of many cells paid before it began.
    Each cell composed for validation is kept until its job asks for it, so that a launcher composing in this
    process (the basic one) does not compose it a second time; a copy sent to another process leaves them."""

    def __init__(self, loader: ConfigLoader, master: DictConfig) -> None:
        self.loader, self.master = loader, master
        self.parser = OverridesParser.create(config_loader=loader)
        self.composed: dict[tuple[str, ...], DictConfig] = {}
        self.groups: dict[str, bool] = {}  # Hydra's lookup of a group copies its config repository: 50 ms
        self.kept: dict[tuple[str, ...], DictConfig] = {}  # validated cells no job has taken yet

    def __getstate__(self) -> dict[str, Any]:
        """A joblib job carries this composer: without the kept cells, one per cell of the sweep."""
        return {**self.__dict__, "kept": {}}

    def is_group(self, key: str) -> bool:
        if key not in self.groups:
            self.groups[key] = bool(self.loader.get_group_options(key))
        return self.groups[key]

    def is_plain_value(self, override: Override) -> bool:
        """Set on the composed config (Hydra's config overrides): not a group, an add or a delete, not Hydra's
        own settings, and a scalar (a dict or list merges with what a copy already holds)."""
        return (
            override.type == OverrideType.CHANGE
            and override.package is None
            and not override.is_hydra_override()
            and not self.is_group(override.key_or_group)
            and not isinstance(override.value(), (dict, list))
        )

    def __call__(self, overrides: list[str]) -> DictConfig:
        """The cell's config: the one kept from its validation, handed over once, else composed now."""
        kept = self.kept.pop(tuple(overrides), None)
        return kept if kept is not None else self.compose(overrides)

    def keep(self, overrides: list[str], cell: DictConfig) -> None:
        self.kept[tuple(overrides)] = cell

    def compose(self, overrides: list[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(overrides)
        # A copy keeps what its cell set: cells share one only if they set the same plain keys.
        shape = tuple(o.key_or_group if self.is_plain_value(o) else o.input_line or "" for o in parsed)
        if shape not in self.composed:
            self.composed[shape] = self.loader.load_sweep_config(self.master, overrides)
            return copy.deepcopy(self.composed[shape])
        cell = copy.deepcopy(self.composed[shape])
        for override in filter(self.is_plain_value, parsed):
            OmegaConf.update(cell, override.key_or_group, override.value(), merge=True)
        task = [o for o in parsed if not o.is_hydra_override()]
        cell.hydra.overrides.task = [o.input_line for o in task]
        cell.hydra.job.override_dirname = override_dirname(task, cell.hydra.job.config.override_dirname)
        return cell


def override_dirname(overrides: Sequence[Override], settings: DictConfig) -> str:
    """``hydra.job.override_dirname`` for these task overrides, as Hydra's config loader writes it."""
    lines = sorted(o.input_line or "" for o in overrides if o.key_or_group not in settings.exclude_keys)
    return settings.item_sep.join(lines).replace("=", settings.kv_sep)


class ComposedCells(ConfigLoader):
    """The config loader a sweep's launcher gets: each cell's config comes from the sweeper's CellComposer,
    which already holds the cells it composed in full, with the parent run's id set for the job's process.
    A parallel launcher sends this loader with every job: it carries those few cells, not one config per
    cell of the sweep (every job of a 100-cell sweep would carry 100). Everything else is Hydra's own."""

    def __init__(self, compose_cell: CellComposer, parent_run_id: str):
        self.loader, self.compose_cell, self.parent_run_id = compose_cell.loader, compose_cell, parent_run_id

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        cell = self.compose_cell(sweep_overrides)
        with open_dict(cell):
            cell.hydra.job.env_set[PARENT_RUN_ENV] = self.parent_run_id
        return cell

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)
