"""Experiment grids: a YAML file (benchmark x quality x method x seed) expanded into cells.

A cell trains one method on one dataset (a benchmark at its training N and a quality) with one seed
and evaluates the result at every evaluation N of the benchmark. Datasets are keyed by
env/arguments/quality/N/episodes/seed and shared by all methods and seeds of a benchmark x quality.

Schema (every key but ``benchmarks`` and ``methods`` optional)::

    name: main
    split: test                       # test (reported tables) or validation (every choice; default)
    seeds: [0, 1, 2]                  # training seeds; statistics are over these
    seeds_by_quality: {medium: [0, 1, 2, 3, 4]}   # other seeds for some qualities
    data: {episodes: 100, ref_episodes: 10, seed: 0, store_agents: null}   # seed: offset in the
                                      # split's own range of dataset seeds (mfdiffuser.splits)
    eval: {episodes: 30, episodes_by_n: {10000: 10}}   # per training seed; also per benchmark
                                      # (eval_options) and method
    # episodes_by_quality: {medium: 6}  per seed for one quality (5 seeds x 6 = 30 per row); an
                                      # episodes_by_n entry wins at its N
    trainer: {steps: 2000, batch_size: 64}       # defaults of every method
    resources: {num_cpus: 1}          # per Ray task
    max_retries: 2                    # Ray retries (worker death, unexpected errors; never ValueError)
    exploitability: {episodes: 4, max_n: 10000}   # at the largest evaluated N <= max_n (envs with a
                                      # measure); also per benchmark and per method
    benchmarks:
      gaussian-squeeze:
        env: gaussian-squeeze         # env or setting name
        env_args: {}
        train: 1000                   # training N, or a setting name (battle-256)
        eval: [100, 1000, 10000]      # evaluation N or setting names
        qualities: [expert, medium, mixed, random]
        data: {episodes: 200}         # overrides of the defaults above
    methods:
      mf-diffuser: {algo: mf-diffuser, options: {beta: 1.0}, trainer: {steps: 3000}, policy: {},
                    eval: {episodes_by_n: {10000: 5}}, benchmarks: {ising: {options: {horizon: 4}}}}
      expert: {behaviour: expert}     # a behaviour policy of the env, evaluated without training

Tuning and learning curves (validation grids; see ``experiments/tune.yaml``)::

    budgets: [1000, 3000, 10000]      # training steps evaluated from ONE run each (also per method
                                      # and per benchmark override): one record per budget
    methods:
      bc: {algo: bc, tune: [{trainer: {lr: 3.0e-4}}, {trainer: {lr: 1.0e-3}},
                            {trainer: {lr: 1.0e-3}, options: {hidden: 512}}]}
    selected: selected.yaml           # settings chosen on validation (``mfd select``), merged into
                                      # each method's benchmark override; path relative to the grid
    methods:
      no-weights: {algo: mf-diffuser, selected_as: mf-diffuser, options: {beta: 0.0}}
                                      # a variant borrows another method's selection; its own
                                      # options, trainer and policy win over the borrowed ones

A tuning list varies the learning rate and at most two method-specific knobs; every trained method of
a benchmark must have the same number of configurations (no list counts as one).

Training seed ``s`` is evaluated at an N on episodes ``s k .. s k + k - 1`` of the split's stream
(``k`` episodes per seed; :func:`mfdiffuser.splits.episode_seeds`): the seeds of a row face different
episodes, and seed ``s`` of every method faces the same ones, so rows compare paired on shared
episodes. A key of a method's ``benchmarks`` that names no benchmark of the grid is an error.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mfdiffuser.splits import STREAM_SIZE, check_split, data_seed
from mfdiffuser.utils import SEED_LIMIT, fingerprint, plain

DATA_DEFAULTS: dict[str, Any] = {"episodes": 100, "ref_episodes": 10, "seed": 0, "store_agents": None}
EVAL_DEFAULTS: dict[str, Any] = {"episodes": 30, "episodes_by_n": {}, "episodes_by_quality": {}}
TOP_KEYS = {
    "name", "seeds", "seeds_by_quality", "data", "eval", "trainer", "resources", "max_retries",
    "exploitability", "benchmarks", "methods", "description", "results", "datasets_dir", "split",
    "budgets", "selected",
}  # fmt: skip
BENCH_KEYS = {"env", "env_args", "train", "eval", "qualities", "data", "eval_options", "exploitability"}
METHOD_KEYS = {
    "algo", "behaviour", "options", "trainer", "policy", "benchmarks", "resources", "eval", "exploitability",
    "tune", "budgets", "selected_as",
}  # fmt: skip
OVERRIDE_KEYS = {
    "options", "trainer", "policy", "resources", "skip", "eval", "exploitability", "tune", "budgets",
}  # fmt: skip
TUNE_KEYS = {"options", "trainer", "policy"}
TUNE_TRAINER_KEYS = {"lr"}
MAX_TUNED_KNOBS = 2
"""Method-specific knobs (options and policy) a tuning list may vary, besides the learning rate."""
EXPL_KEYS = {"enabled", "episodes", "max_n"}
DATASET_QUALITIES = ("expert", "medium", "mixed", "random")
TRAINER_KEYS = {
    "steps", "batch_size", "lr", "weight_decay", "grad_clip", "ema_decay", "ema_start", "log_every",
    "checkpoint_every", "device",
}  # fmt: skip


@dataclass(frozen=True)
class EnvPoint:
    """One population size of a benchmark: its N and the env arguments that build it."""

    n_agents: int
    env: str
    env_args: dict[str, Any]

    def make(self) -> Any:
        """Build the env."""
        from mfdiffuser.envs import make

        return make(self.env, **self.env_args)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a cell needs: generated once, shared by every cell with the same key."""

    env: str
    env_args: dict[str, Any]
    quality: str
    episodes: int
    ref_episodes: int
    seed: int
    """Master seed: in the split's own range (:func:`mfdiffuser.splits.data_seed`)."""
    store_agents: int | None
    split: str = "validation"
    """The split the dataset belongs to (recorded in its metadata)."""

    @property
    def key(self) -> str:
        """File-name-safe identity: ``<env>-n<N>-<quality>-e<episodes>-s<seed>-<hash>``."""
        n = self.env_args.get("n_agents", "default")
        digest = fingerprint(self.__dict__)[:8]
        return f"{self.env}-n{n}-{self.quality}-e{self.episodes}-s{self.seed}-{digest}"

    def path(self, data_dir: Path) -> Path:
        """Where the dataset lives under ``data_dir``."""
        return Path(data_dir) / f"{self.key}.h5"


@dataclass(frozen=True)
class Cell:
    """One grid cell: a method trained on one benchmark x quality with one seed, evaluated at every N."""

    benchmark: str
    quality: str
    method: str
    seed: int
    algo: str | None
    """Registered algorithm, or None for a behaviour-policy method."""
    behaviour: str | None
    """Behaviour policy quality (``dataset`` = the cell's quality) when ``algo`` is None."""
    options: dict[str, Any]
    trainer: dict[str, Any]
    policy: dict[str, Any]
    resources: dict[str, Any]
    train_point: EnvPoint
    eval_points: tuple[EnvPoint, ...]
    dataset: DatasetSpec | None
    eval_episodes: int
    """Evaluation episodes per N (one training seed each)."""
    eval_episodes_by_n: dict[int, int]
    """Exceptions to ``eval_episodes`` at some N (planners that are slow at large N)."""
    ref_episodes: int
    """Episodes per reference policy (random, expert) for the normalized score at each N."""
    exploitability: dict[str, Any] = field(default_factory=dict)
    split: str = "validation"
    """Split of the cell's dataset and evaluation episodes (``test`` or ``validation``)."""
    config: str = ""
    """Label of the method's tuning configuration (``c0``, ``c1``, ...), empty without a tuning list."""
    tuned: dict[str, Any] = field(default_factory=dict)
    """The tuning configuration's own settings (already merged into options, trainer and policy)."""
    budgets: tuple[int, ...] = ()
    """Training budgets (steps, ascending) evaluated from one run, one record each; empty: one record
    after ``trainer.steps``."""

    @property
    def id(self) -> str:
        """Stable file-name-safe identity of the cell."""
        config = f"__{self.config}" if self.config else ""
        return f"{self.benchmark}__{self.quality}__{self.method}{config}__s{self.seed}"

    def record_id(self, budget: int | None = None) -> str:
        """Identity of the record of one budget (the cell's own id without budgets)."""
        return self.id if budget is None else f"{self.id}__b{budget}"

    @property
    def record_ids(self) -> list[str]:
        """Identities of every record the cell writes (one per budget)."""
        return [self.record_id(b) for b in self.budgets] if self.budgets else [self.id]

    def episodes_at(self, n_agents: int) -> int:
        """Evaluation episodes at population size N."""
        return int(self.eval_episodes_by_n.get(int(n_agents), self.eval_episodes))

    def episode_seeds_at(self, n_agents: int) -> list[int]:
        """Evaluation seeds of the episodes at N: the training seed's block of the split's stream.

        Seed ``s`` with ``k`` episodes runs episodes ``s k .. s k + k - 1``: a row's seeds face
        different episodes, and seed ``s`` of every method faces the same ones (the pairing).
        """
        return self.block_seeds(self.episodes_at(n_agents))

    def block_seeds(self, count: int) -> list[int]:
        """Seeds of the ``count`` episodes of this training seed's block of the split's stream."""
        from mfdiffuser.splits import episode_seeds

        return episode_seeds(self.split, count, start=self.seed * count)

    @property
    def fingerprint(self) -> str:
        """Hash of everything that determines the cell's result (a changed spec reruns the cell)."""
        return fingerprint(self.to_dict())

    @property
    def train_fingerprint(self) -> str:
        """Hash of what determines the trained run (names its run directory)."""
        d = self.to_dict()
        return fingerprint({k: d[k] for k in ("algo", "options", "trainer", "dataset", "seed", "budgets")})

    @property
    def run_name(self) -> str:
        """Name of the cell's run directory.

        Cells that train the same thing (algorithm, options, trainer, dataset and seed: the
        ``train_fingerprint``) share one run, whatever their method's name: methods that differ only
        in ``policy`` (planner variants) are trained once and evaluated each their own way. A cell
        with several ``budgets`` keeps a run of its own, since it evaluates the run part-way.
        """
        if self.budgets:
            return f"{self.id}-{self.train_fingerprint[:8]}"
        return f"{self.benchmark}__{self.quality}__{self.algo}__s{self.seed}-{self.train_fingerprint[:8]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (stored in the cell's record)."""
        return json.loads(json.dumps(plain(self), sort_keys=True, default=str))


CELL_KEYS = ("benchmark", "quality", "method", "seed")


def select_cells(cells: tuple[Cell, ...], only: list[str] | None) -> tuple[Cell, ...]:
    """Keep the cells matching every ``KEY=V1,V2`` filter (KEY in benchmark, quality, method, seed).

    A subset of a grid has the same cell identities and fingerprints as the full grid, so running it
    and later the whole grid into one results store finishes only what is missing.
    """
    selected = cells
    for item in only or []:
        key, sep, values = item.partition("=")
        if not sep or key not in CELL_KEYS or not values:
            raise ValueError(
                f"--only {item!r}: expected KEY=VALUE[,VALUE...] with KEY in {', '.join(CELL_KEYS)}"
            )
        wanted = {v.strip() for v in values.split(",")}
        known = {str(getattr(c, key)) for c in cells}
        if not wanted & known:
            raise ValueError(
                f"--only {item!r}: no cell has {key} in {sorted(wanted)}; grid has {sorted(known)}"
            )
        selected = tuple(c for c in selected if str(getattr(c, key)) in wanted)
    return selected


@dataclass(frozen=True)
class Grid:
    """A parsed grid: its name, raw spec and cells in a deterministic order."""

    name: str
    spec: dict[str, Any]
    cells: tuple[Cell, ...]
    max_retries: int
    split: str = "validation"
    """The split of every cell (``test`` or ``validation``)."""

    def datasets(self) -> dict[str, DatasetSpec]:
        """Distinct datasets the cells need, by key."""
        return {c.dataset.key: c.dataset for c in self.cells if c.dataset is not None}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (safe_load keeps the last).

    Merge keys (``<<: *anchor``) work as in YAML 1.1: a key written in the mapping overrides the one
    merged in, which is not a duplicate.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the safe loader's own error names it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys: a grid written twice over means a mistake."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_spec(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read a grid spec from a YAML path, or copy a dict.

    Raises:
        FileNotFoundError: no file at ``spec``.
        ValueError: a directory, an unreadable or non-text file, invalid YAML, or not a mapping.
    """
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    path = Path(spec)
    if path.is_dir():
        raise ValueError(f"grid spec {path} is a directory, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"grid spec {path} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"grid spec {path} is not a UTF-8 text (YAML) file") from None
    except OSError as exc:
        raise ValueError(f"grid spec {path} cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ValueError(f"{path}: not valid YAML ({message})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a grid spec must be a mapping")
    data.setdefault("name", path.stem)
    return data


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it can name a file inside the results directory, else raise ValueError.

    Grid, benchmark and method names become file and directory names (``results/<grid>``,
    ``cells/<benchmark>__<quality>__<method>__s<seed>.json``): no path separator, no leading dot
    (``..`` would leave the directory), nothing empty.
    """
    text = name if isinstance(name, str) else None
    if not text or text.startswith(".") or any(c in text for c in "/\\\0") or text != text.strip():
        raise ValueError(
            f"{what}: {name!r} cannot name a file (no '/', no leading '.', no surrounding spaces)"
        )
    return text


def check_seeds(seeds: Any, where: str) -> list[int]:
    """A non-empty list of training seeds, each an integer in [0, 2**64)."""
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(type(s) is int and 0 <= s < SEED_LIMIT for s in seeds)
    ):
        raise ValueError(f"{where} must be a non-empty list of integers in [0, 2**64), got {seeds!r}")
    return seeds


def _unknown(keys: Any, allowed: set[str], where: str) -> None:
    bad = sorted(set(keys) - allowed)
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")


def env_point(env: str, env_args: Mapping[str, Any], entry: Any, where: str) -> EnvPoint:
    """Resolve an N (int) or a setting name into an :class:`EnvPoint` of benchmark ``env``."""
    from mfdiffuser.envs import list_settings, resolve

    if isinstance(entry, bool) or not isinstance(entry, int | str):
        raise ValueError(f"{where}: expected a population size or a setting name, got {entry!r}")
    if isinstance(entry, str):
        settings = list_settings()
        if entry not in settings:
            raise ValueError(f"{where}: unknown setting {entry!r}; choose from {', '.join(settings)}")
        name, args = resolve(entry, **dict(env_args))
        base, _ = resolve(env)
        if name != base:
            raise ValueError(f"{where}: setting {entry!r} is a {name} setting, not {base}")
    else:
        if entry < 1:
            raise ValueError(f"{where}: population size must be >= 1, got {entry}")
        from mfdiffuser.eval.evaluate import env_args_at

        name, base_args = resolve(env, **dict(env_args))
        args = env_args_at(name, base_args, entry)
    if "n_agents" not in args:
        raise ValueError(f"{where}: cannot tell N of {entry!r}")
    return EnvPoint(int(args["n_agents"]), name, dict(args))


def _count(value: Any, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_data(data: Mapping[str, Any], qualities: list[str], where: str) -> None:
    """Check a benchmark's merged ``data`` options (counts, seed, stored agents) for its qualities.

    Raises:
        ValueError: naming ``where`` and the key.
    """
    least = 2 if "mixed" in qualities else 1  # a mixed dataset holds random and expert episodes
    _count(data["episodes"], least, f"{where}.data: episodes" + (" (mixed needs 2)" if least == 2 else ""))
    _count(data["ref_episodes"], 1, f"{where}.data: ref_episodes")
    for key in ("episodes", "ref_episodes"):
        if data[key] > STREAM_SIZE:
            raise ValueError(f"{where}.data: {key} must be at most {STREAM_SIZE:,}, got {data[key]:,}")
    _count(data["seed"], 0, f"{where}.data: seed")
    if data["seed"] >= STREAM_SIZE:
        raise ValueError(f"{where}.data: seed must be below {STREAM_SIZE:,} (an offset in the split's range)")
    if data["store_agents"] is not None:
        _count(data["store_agents"], 1, f"{where}.data: store_agents")


def check_exploitability(options: Mapping[str, Any], where: str) -> None:
    """Check merged exploitability options (``enabled`` a bool, ``episodes`` and ``max_n`` >= 1).

    Raises:
        ValueError: naming ``where`` and the key.
    """
    if "enabled" in options and not isinstance(options["enabled"], bool):
        raise ValueError(f"{where}.exploitability: enabled must be true or false, got {options['enabled']!r}")
    for key in ("episodes", "max_n"):
        if key in options:
            _count(options[key], 1, f"{where}.exploitability: {key}")


def check_trainer(trainer: Mapping[str, Any], where: str) -> None:
    """Build the trainer config of merged ``trainer`` options to check names, types and ranges.

    The device name is checked for syntax only: the cells may run on Ray workers with devices
    (CUDA) that the machine parsing the grid does not have.

    Raises:
        ValueError: naming ``where`` and the option.
    """
    from mfdiffuser.algos.base import config_from_dict
    from mfdiffuser.algos.trainer import TrainerConfig

    options = {**trainer, "device": "auto", "progress": False}
    try:
        config_from_dict(TrainerConfig, options)
    except ValueError as exc:
        raise ValueError(f"{where}.trainer: {exc}") from None
    device = trainer.get("device", "auto")
    if not isinstance(device, str):
        raise ValueError(f"{where}.trainer: device must be a string, got {device!r}")
    if device != "auto":
        import torch

        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"{where}.trainer: unknown device {device!r}; use auto, cpu or cuda[:i]")


def check_options(algo: str, options: Mapping[str, Any], where: str) -> None:
    """Build algorithm ``algo``'s Config from ``options`` to check their names and types.

    Raises:
        ValueError: naming ``where`` and the option.
    """
    from mfdiffuser.algos.base import algo_module, config_from_dict

    try:
        config_from_dict(algo_module(algo).Config, dict(options))
    except ValueError as exc:
        raise ValueError(f"{where}.options: {exc}") from None


def check_env_point(point: EnvPoint, where: str) -> None:
    """Build (and close) the env of ``point`` so that its own checks run (e.g. ising's square N).

    Raises:
        ValueError: naming ``where`` and the env's complaint.
    """
    try:
        env = point.make()
    except ValueError as exc:
        raise ValueError(f"{where}: N={point.n_agents}: {exc}") from None
    env.close()


def check_overrides(methods: Mapping[str, Any], benchmarks: list[str]) -> None:
    """Refuse a method's ``benchmarks`` override whose key names no benchmark of the grid.

    Raises:
        ValueError: naming the method, the key and the grid's benchmarks.
    """
    for mname, m in methods.items():
        over = m.get("benchmarks") if isinstance(m, dict) else None
        if over is None:
            continue
        if not isinstance(over, dict):
            raise ValueError(f"method {mname}.benchmarks: must be a mapping of benchmark names")
        for key in over:
            if key not in benchmarks:
                raise ValueError(
                    f"method {mname}.benchmarks: {key!r} names no benchmark of the grid; "
                    f"benchmarks: {', '.join(benchmarks)}"
                )
            if not isinstance(over[key], dict):
                raise ValueError(f"method {mname}.benchmarks.{key}: must be a mapping")


def check_budgets(value: Any, where: str) -> tuple[int, ...]:
    """A budgets list as a tuple of ascending step counts.

    Raises:
        ValueError: not a non-empty list of distinct integers >= 1.
    """
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        or len(set(value)) != len(value)
    ):
        msg = f"{where}: budgets must be a non-empty list of distinct step counts >= 1, got {value!r}"
        raise ValueError(msg)
    return tuple(sorted(value))


def tune_configs(value: Any, where: str) -> list[dict[str, Any]]:
    """Check a tuning list: entries of options/policy knobs and the learning rate, at most two knobs.

    Raises:
        ValueError: naming ``where`` and what is wrong.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}.tune: must be a non-empty list of configurations")
    knobs: set[str] = set()
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}.tune[{i}]: must be a mapping of options, trainer and policy")
        _unknown(entry, TUNE_KEYS, f"{where}.tune[{i}]")
        for key in TUNE_KEYS:
            if not isinstance(entry.get(key) or {}, dict):
                raise ValueError(f"{where}.tune[{i}].{key}: must be a mapping")
        _unknown(entry.get("trainer") or {}, TUNE_TRAINER_KEYS, f"{where}.tune[{i}].trainer")
        knobs |= set(entry.get("options") or {}) | set(entry.get("policy") or {})
    if len(knobs) > MAX_TUNED_KNOBS:
        raise ValueError(
            f"{where}.tune: varies {len(knobs)} method-specific knobs ({', '.join(sorted(knobs))}); "
            f"at most {MAX_TUNED_KNOBS} besides the learning rate"
        )
    if len({fingerprint(e) for e in value}) != len(value):
        raise ValueError(f"{where}.tune: two configurations are the same")
    return [dict(e) for e in value]


def load_selected(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Read a selection file (``mfd select``): ``methods: {method: {benchmark: settings}}``.

    Raises:
        ValueError: a missing or malformed file, naming it.
    """
    if not path.is_file():
        raise ValueError(f"grid: selected settings {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"grid: selected settings {path} is not valid YAML ({type(exc).__name__})") from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not all(
        isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()) for v in methods.values()
    ):
        msg = f"grid: selected settings {path}: expected methods: {{method: {{benchmark: settings}}}}"
        raise ValueError(msg)
    for mname, by_bench in methods.items():
        for bname, settings in by_bench.items():
            _unknown(settings, {*TUNE_KEYS, "reason"}, f"{path}: {mname}.{bname}")
    return methods


def selected_path(spec: str | Path | Mapping[str, Any], raw: Mapping[str, Any]) -> Path | None:
    """The selection file a grid's ``selected:`` names, or None.

    Args:
        spec: the grid as given (a YAML path: ``selected`` is relative to its directory; a dict:
            to the working directory).
        raw: the grid's spec as read.
    """
    if raw.get("selected") is None:
        return None
    base = Path(spec).parent if isinstance(spec, str | Path) else Path.cwd()
    return base / str(raw["selected"])


def _with_selection(
    chosen: Mapping[str, Any], key: str, lent: bool, *own: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A method's ``key`` settings (options, trainer or policy; lowest first) with its selection's.

    A method's own selection overrides the settings written before it. A lent one (``selected_as``)
    lies beneath the variant's own settings: they are what the variant varies (beta 0 stays 0).
    """
    return _merge(chosen.get(key), *own) if lent else _merge(*own, chosen.get(key))


def _merge(*dicts: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        if d is not None and not isinstance(d, Mapping):
            raise ValueError(
                "grid: data, eval, trainer, options, policy and exploitability take KEY: VALUE entries, "
                f"got a {type(d).__name__}: {str(d)[:60]}"
            )
        out.update(d or {})
    return out


def _eval_episodes(
    levels: Sequence[Mapping[str, Any] | None], qualities: Sequence[str], where: str
) -> tuple[dict[str, int], dict[int, int]]:
    """Evaluation episodes per training seed for each quality, and the exceptions by N.

    ``levels``: the ``eval`` options of the grid, the benchmark (``eval_options``), the method and the
    method's benchmark override, most general first. A more specific level wins: its ``episodes``
    over any level's ``episodes_by_quality`` before it, and within one level ``episodes_by_quality``
    over ``episodes``. ``episodes_by_n`` entries add up over the levels (a later one wins at its N).
    """
    per_quality = dict.fromkeys(qualities, int(EVAL_DEFAULTS["episodes"]))
    by_n: dict[int, int] = {}
    for level in levels:
        ev = _merge(level)
        _unknown(ev, set(EVAL_DEFAULTS), f"{where} eval options")
        by_quality = {str(k): int(v) for k, v in _merge(ev.get("episodes_by_quality")).items()}
        odd = sorted(set(by_quality) - set(DATASET_QUALITIES))
        if odd:
            raise ValueError(
                f"{where}: episodes_by_quality names {', '.join(odd)}; "
                f"qualities are {', '.join(DATASET_QUALITIES)}"
            )
        for q in qualities:
            if q in by_quality:
                per_quality[q] = by_quality[q]
            elif "episodes" in ev:
                per_quality[q] = int(ev["episodes"])
        by_n.update({int(k): int(v) for k, v in _merge(ev.get("episodes_by_n")).items()})
    return per_quality, by_n


def parse_grid(spec: str | Path | Mapping[str, Any]) -> Grid:
    """Validate a grid spec and expand it into cells (benchmark x quality x method x seed).

    Everything a cell needs is checked here, before any work starts: the keys, every method's
    algorithm options (its Config is built) and trainer options (a TrainerConfig is built), the data
    counts, and every env point (its env is built, so that its parameter checks run).

    Raises:
        ValueError: naming the benchmark or method and the key at fault.
        MfdError: an optional package an env needs is missing.
    """
    from mfdiffuser.algos.base import ALGOS

    raw = load_spec(spec)
    _unknown(raw, TOP_KEYS, "grid")
    name = check_name(str(raw.get("name", "grid")), "grid: name")
    try:
        split = check_split(raw.get("split", "validation"))
    except ValueError as exc:
        raise ValueError(f"grid: {exc}") from None
    seeds = check_seeds(raw.get("seeds", [0]), "grid: seeds")
    seeds_by_quality = raw.get("seeds_by_quality") or {}
    if not isinstance(seeds_by_quality, dict):
        raise ValueError(f"grid: seeds_by_quality must map qualities to seed lists, got {seeds_by_quality!r}")
    seeds_by_quality = {
        q: check_seeds(v, f"grid: seeds_by_quality.{q}") for q, v in seeds_by_quality.items()
    }
    top_seed = max([*seeds, *(s for v in seeds_by_quality.values() for s in v)])  # its block is the last
    benches = raw.get("benchmarks")
    methods = raw.get("methods")
    if not isinstance(benches, dict) or not benches:
        raise ValueError("grid: 'benchmarks' must be a non-empty mapping")
    if not isinstance(methods, dict) or not methods:
        raise ValueError("grid: 'methods' must be a non-empty mapping")
    for key in [*benches, *methods]:  # they name the cells' record files
        check_name(key, "grid: benchmark and method names")
    max_retries = _count(raw.get("max_retries", 2), 0, "grid: max_retries")
    check_overrides(methods, list(benches))
    selected: dict[str, dict[str, dict[str, Any]]] = {}
    chosen_path = selected_path(spec, raw)
    borrowed = {str(m["selected_as"]) for m in methods.values() if isinstance(m, dict) and "selected_as" in m}
    if borrowed and chosen_path is None:
        raise ValueError("grid: 'selected_as' borrows a selection, but the grid names no 'selected:' file")
    if chosen_path is not None:
        selected = load_selected(chosen_path)
        missing = sorted(borrowed - set(selected))
        if missing:
            msg = f"grid: selected_as names {missing[0]!r}, which {chosen_path.name} does not select"
            raise ValueError(msg)
        for mname, by_bench in selected.items():
            if not borrowed and mname not in methods:  # a grid that borrows may use part of a file
                raise ValueError(f"grid: selected settings name method {mname!r}, not in the grid")
            if borrowed:  # ... of its methods and of its benchmarks
                by_bench = {b: v for b, v in by_bench.items() if b in benches}
            check_overrides({mname: {"benchmarks": by_bench}}, list(benches))
    grid_budgets = check_budgets(raw["budgets"], "grid") if "budgets" in raw else ()
    cells: list[Cell] = []
    tuned_counts: dict[str, dict[str, int]] = {}  # benchmark -> trained method -> configurations
    checked: set[str] = set()  # fingerprints of env points and options already validated
    for bname, b in benches.items():
        where = f"benchmark {bname}"
        if not isinstance(b, dict):
            raise ValueError(f"{where}: must be a mapping")
        _unknown(b, BENCH_KEYS, where)
        env = str(b.get("env", bname))
        env_args = dict(b.get("env_args") or {})
        if "train" not in b or "eval" not in b:
            raise ValueError(f"{where}: 'train' (N or setting) and 'eval' (list) are required")
        train_pt = env_point(env, env_args, b["train"], f"{where}.train")
        evals = b["eval"] if isinstance(b["eval"], list) else [b["eval"]]
        if not evals:
            raise ValueError(f"{where}: 'eval' must list at least one N")
        eval_pts = tuple(env_point(env, env_args, e, f"{where}.eval") for e in evals)
        qualities = b.get("qualities", list(DATASET_QUALITIES))
        if not isinstance(qualities, list) or not qualities:
            raise ValueError(f"{where}: qualities must be a non-empty list, got {qualities!r}")
        for q in qualities:
            if q not in DATASET_QUALITIES:
                raise ValueError(
                    f"{where}: unknown quality {q!r}; choose from {', '.join(DATASET_QUALITIES)}"
                )
        data = _merge(DATA_DEFAULTS, raw.get("data"), b.get("data"))
        _unknown(data, set(DATA_DEFAULTS), f"{where}.data")
        check_data(data, qualities, where)
        for label, point in [("train", train_pt)] + [("eval", p) for p in eval_pts]:
            key = fingerprint({"env": point.env, "args": point.env_args})
            if key not in checked:
                check_env_point(point, f"{where}.{label}")
                checked.add(key)
        expl = _merge(raw.get("exploitability"), b.get("exploitability"))
        _unknown(expl, EXPL_KEYS, f"{where}.exploitability")
        for mname, m in methods.items():
            mwhere = f"method {mname}"
            if not isinstance(m, dict):
                raise ValueError(f"{mwhere}: must be a mapping")
            _unknown(m, METHOD_KEYS, mwhere)
            over = (m.get("benchmarks") or {}).get(bname, {})
            _unknown(over, OVERRIDE_KEYS, f"{mwhere}.benchmarks.{bname}")
            if over.get("skip"):
                continue
            algo, behaviour = m.get("algo"), m.get("behaviour")
            if (algo is None) == (behaviour is None):
                raise ValueError(f"{mwhere}: give exactly one of 'algo' or 'behaviour'")
            lender = m.get("selected_as")
            chosen = selected.get(str(lender or mname), {}).get(str(bname), {})
            if lender is not None and (algo is None or not chosen):
                why = "a behaviour method is not trained" if algo is None else f"no selection for {bname}"
                raise ValueError(f"{mwhere}: selected_as {lender}: {why}")
            if chosen_path is not None and algo is not None and not chosen:
                raise ValueError(
                    f"{mwhere}: {chosen_path.name} selects nothing for benchmark {bname}; a grid "
                    "that names a selection trains every method with it (select on a tuning store "
                    "that has this method and benchmark)"
                )
            lent = lender is not None
            own_trainer = _with_selection(chosen, "trainer", lent, m.get("trainer"), over.get("trainer"))
            trainer = _merge(raw.get("trainer"), own_trainer)
            cell_expl = _merge(expl, m.get("exploitability"), over.get("exploitability"))
            _unknown(cell_expl, EXPL_KEYS, f"{mwhere}.exploitability")
            check_exploitability(cell_expl, f"{mwhere} on benchmark {bname}")
            levels = [raw.get("eval"), b.get("eval_options"), m.get("eval"), over.get("eval")]
            per_quality, by_n = _eval_episodes(levels, qualities, mwhere)
            episode_counts = [*per_quality.values(), *by_n.values()]
            if min(episode_counts) < 1:
                raise ValueError(f"{mwhere}: evaluation episodes must be >= 1")
            if max(episode_counts) > STREAM_SIZE:
                raise ValueError(f"{mwhere}: at most {STREAM_SIZE:,} evaluation episodes per N")
            most = max([*episode_counts, int(cell_expl.get("episodes", 0))])
            if (top_seed + 1) * most > STREAM_SIZE:
                raise ValueError(
                    f"{mwhere}: seed {top_seed} with {most} evaluation episodes runs past the "
                    f"split's {STREAM_SIZE:,} episodes (seed s evaluates episodes s k .. s k + k - 1); "
                    "use smaller seeds"
                )
            _unknown(trainer, TRAINER_KEYS, f"{mwhere}.trainer")
            if algo is not None and algo not in ALGOS:
                raise ValueError(f"{mwhere}: unknown algorithm {algo!r}; choose from {', '.join(ALGOS)}")
            if behaviour is not None and behaviour not in (*DATASET_QUALITIES, "dataset"):
                raise ValueError(f"{mwhere}: behaviour must be a quality or 'dataset', got {behaviour!r}")
            options = _with_selection(chosen, "options", lent, m.get("options"), over.get("options"))
            policy = _with_selection(chosen, "policy", lent, m.get("policy"), over.get("policy"))
            owhere = f"{mwhere} on benchmark {bname}"
            budgets = grid_budgets
            for source, label in ((m, mwhere), (over, f"{mwhere}.benchmarks.{bname}")):
                if "budgets" in source:
                    budgets = check_budgets(source["budgets"], label)
            tune = over.get("tune", m.get("tune"))
            if algo is None and (tune is not None or "budgets" in m or "budgets" in over):
                raise ValueError(f"{mwhere}: a behaviour method is not trained: no tune or budgets")
            configs = [("", {})] if tune is None else [
                (f"c{i}", e) for i, e in enumerate(tune_configs(tune, owhere))
            ]
            if algo is not None:
                tuned_counts.setdefault(str(bname), {})[str(mname)] = len(configs)
            for label, entry in configs:
                for q in qualities:
                    cells.extend(
                        _cells(
                            raw, b, m, over, str(bname), str(mname), q, seeds_by_quality.get(q, seeds),
                            split, data, train_pt,
                            eval_pts, per_quality[q], by_n, cell_expl, algo, behaviour,
                            options=_merge(options, entry.get("options")),
                            trainer={
                                **_merge(trainer, entry.get("trainer")),
                                **({"steps": budgets[-1]} if budgets and algo is not None else {}),
                            },
                            policy=_merge(policy, entry.get("policy")),
                            config=label, tuned=entry, budgets=budgets if algo is not None else (),
                        )
                    )
                if algo is not None:
                    cfg_opts = _merge(options, entry.get("options"))
                    cfg_trainer = _merge(trainer, entry.get("trainer"))
                    key = fingerprint({"algo": algo, "options": cfg_opts, "trainer": cfg_trainer})
                    if key not in checked:
                        where = owhere + (f" (tune {label})" if label else "")
                        check_options(algo, cfg_opts, where)
                        check_trainer(cfg_trainer, where)
                        checked.add(key)
    for bname, counts in tuned_counts.items():
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{k} {v}" for k, v in counts.items())
            raise ValueError(
                f"benchmark {bname}: every trained method needs the same number of tuning "
                f"configurations; got {listed}"
            )
    unused = sorted(set(seeds_by_quality) - {c.quality for c in cells})
    if unused:
        names = ", ".join(unused)
        raise ValueError(f"grid: seeds_by_quality names {names}, a quality no benchmark of the grid has")
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("grid: duplicate cells (benchmark, quality, method and seed must be unique)")
    return Grid(name, raw, tuple(cells), max_retries, split)


def _cells(
    raw: Mapping[str, Any],
    b: Mapping[str, Any],
    m: Mapping[str, Any],
    over: Mapping[str, Any],
    bname: str,
    mname: str,
    q: str,
    seeds: list[int],
    split: str,
    data: Mapping[str, Any],
    train_pt: EnvPoint,
    eval_pts: tuple[EnvPoint, ...],
    episodes: int,
    by_n: dict[int, int],
    cell_expl: dict[str, Any],
    algo: str | None,
    behaviour: str | None,
    **fields: Any,
) -> list[Cell]:
    """The cells of one method x benchmark x quality x configuration, one per training seed."""
    dataset = None
    if algo is not None:
        dataset = DatasetSpec(
            env=train_pt.env,
            env_args=train_pt.env_args,
            quality=q,
            episodes=int(data["episodes"]),
            ref_episodes=int(data["ref_episodes"]),
            seed=data_seed(split, int(data["seed"])),
            store_agents=data["store_agents"],
            split=split,
        )
    resources = _merge({"num_cpus": 1}, raw.get("resources"), m.get("resources"), over.get("resources"))
    return [
        Cell(
            benchmark=bname,
            quality=q,
            method=mname,
            seed=int(seed),
            algo=algo,
            behaviour=behaviour,
            resources=resources,
            train_point=train_pt,
            eval_points=eval_pts,
            dataset=dataset,
            eval_episodes=episodes,
            eval_episodes_by_n=by_n,
            ref_episodes=int(data["ref_episodes"]),
            exploitability=cell_expl,
            split=split,
            **fields,
        )
        for seed in seeds
    ]

