"""The on-disk dataset format (chunked, compressed HDF5), its metadata and the validating loader.

One file holds E episodes of one env at one population size N, with K stored agents per episode.
Step arrays are ``[E, T+1, K, S]``-style blocks chunked along episodes; the layout, attributes and
checksum are documented in ``docs/datasets.md``. The file starts with a digest of all its other
bytes (in the HDF5 user block, :mod:`mfdiffuser.integrity`), which :func:`load_dataset` checks
before HDF5 reads anything; it then checks everything else and raises :class:`DatasetError` with a
one-line message on any problem.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfdiffuser.errors import MfdError
from mfdiffuser.integrity import HEADER_SIZE, IntegrityError, read_seal, seal_file, verify_file

FORMAT = "mfdiffuser-dataset"
"""Value of the root attribute ``format`` of every finished dataset file."""
SCHEMA_VERSION = 1
"""Version of the layout below; bumped on any incompatible change."""
DATASET_QUALITIES: tuple[str, ...] = ("expert", "medium", "random", "mixed")
"""Qualities a dataset can be generated at (``mixed`` = alternating random and expert episodes)."""
CHECKSUM_ALGORITHM = "sha256"
DIGEST_KIND = "dataset"
"""Kind named in the digest header of a dataset file (see :mod:`mfdiffuser.integrity`)."""
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
"""First bytes of an HDF5 file without a user block: a dataset written before file digests."""
_RECOVER = "regenerate it with `mfd data generate`"
DEFAULT_MEMORY_LIMIT = 1 << 30
"""Datasets whose step arrays (plus returns-to-go) fit in this many bytes are loaded into memory."""

# name -> (rank, kind) of every array; kind "f" float (checked finite), "i" integer, "b" bool, "S" bytes.
# Step arrays have the episode axis first and are chunked along it (see chunk_shape).
STEP_ARRAYS: dict[str, tuple[int, str]] = {
    "states": (4, "f"),  # [E, T+1, K, S]
    "actions": (3, "i"),  # [E, T, K]
    "rewards": (3, "f"),  # [E, T, K]
    "alive": (3, "b"),  # [E, T+1, K]
    "summaries": (3, "f"),  # [E, T+1, P]
    "pop_reward": (2, "f"),  # [E, T]
}
EPISODE_ARRAYS: dict[str, tuple[int, str]] = {
    "length": (1, "i"),  # [E]
    "terminated": (1, "b"),  # [E]
    "truncated": (1, "b"),  # [E]
    "quality": (1, "S"),  # [E]
    "env_seed": (1, "i"),  # [E]
    "policy_seed": (1, "i"),  # [E]
    "agent_index": (2, "i"),  # [E, K]
}
ALL_ARRAYS: dict[str, tuple[int, str]] = {**STEP_ARRAYS, **EPISODE_ARRAYS}
VIEW_ARRAYS: dict[str, tuple[int, str]] = {"views": (4, "u")}  # [E, T+1, K, V] uint8, when view_size > 0
VIEW_LEVELS = 255
"""A stored view value ``x`` in [0, 1] is the byte ``round(255 x)``, read back as ``byte / 255``."""


def step_arrays(meta: DatasetMeta) -> dict[str, tuple[int, str]]:
    """The step arrays of a dataset: :data:`STEP_ARRAYS`, plus ``views`` when it stores views."""
    return {**STEP_ARRAYS, **(VIEW_ARRAYS if meta.view_size else {})}


def all_arrays(meta: DatasetMeta) -> dict[str, tuple[int, str]]:
    """Every array of a dataset: its :func:`step_arrays` and :data:`EPISODE_ARRAYS`."""
    return {**step_arrays(meta), **EPISODE_ARRAYS}


def split_views(states: np.ndarray, view_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``states[..., S]`` -> ``(features [..., S - V] float32, views [..., V] uint8)``.

    Raises:
        ValueError: a view value outside [0, 1] (it would not survive the byte).
    """
    cut = states.shape[-1] - view_size
    views = states[..., cut:]
    if views.size and (views.min() < 0.0 or views.max() > 1.0):
        raise ValueError(f"stored views must lie in [0, 1], got [{views.min()}, {views.max()}]")
    return states[..., :cut], np.rint(views * VIEW_LEVELS).astype(np.uint8)


def join_views(features: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_views` (up to the byte's 1/255 steps): ``[..., S]`` float32 states."""
    out = np.empty((*features.shape[:-1], features.shape[-1] + views.shape[-1]), dtype=np.float32)
    out[..., : features.shape[-1]] = features
    np.multiply(views, np.float32(1.0 / VIEW_LEVELS), out=out[..., features.shape[-1] :], casting="unsafe")
    return out


class DatasetError(MfdError):
    """A dataset file is missing, unreadable, of another schema version, corrupted or inconsistent."""


def normalized_score(value: float | np.ndarray, r_random: float, r_expert: float) -> float | np.ndarray:
    """``100 * (value - r_random) / (r_expert - r_random)``.

    Raises:
        ValueError: the references are not finite, or the expert's is not above the random one's (the
            score would be undefined, or its scale reversed: better returns scoring lower).
    """
    if not (math.isfinite(r_random) and math.isfinite(r_expert)):
        raise ValueError(f"reference returns must be finite, got random={r_random}, expert={r_expert}")
    if r_expert - r_random < 1e-12:
        raise ValueError(
            f"the expert reference return ({r_expert}) is not above the random one ({r_random}); "
            "score undefined"
        )
    return 100.0 * (np.asarray(value, dtype=np.float64) - r_random) / (r_expert - r_random)


@dataclass(frozen=True)
class DatasetMeta:
    """Everything a learner or an evaluator needs to know about a dataset, without its arrays."""

    env: str
    """Registered env name (``mfdiffuser.envs.list_envs()``)."""
    env_args: dict[str, Any]
    """Every constructor argument of the env (``env.config()``), including ``n_agents``."""
    n_agents: int
    """N, the population size the data was generated at."""
    quality: str
    """Dataset quality: expert, medium, random or mixed."""
    horizon: int
    """T, the env's episode length (episodes that terminate early are padded to T)."""
    state_size: int
    """S, per-agent state feature size."""
    n_actions: int
    """A, number of discrete actions."""
    summary_size: int
    """P, size of the population summary phi(mu_t)."""
    n_episodes: int
    """E, number of episodes."""
    stored_agents: int
    """K, agents stored per episode (K = N when all are kept)."""
    ref_returns: dict[str, float]
    """Per-agent mean episode return of the ``random`` and ``expert`` behaviour policies at this N."""
    ref_episodes: int
    """Episodes rolled out per reference policy to estimate ``ref_returns``."""
    seed: int
    """Master seed of the generation."""
    behaviour_policy: dict[str, str]
    """Behaviour policy (class) used for each episode label."""
    schema_version: int = SCHEMA_VERSION
    """On-disk schema version."""
    library_version: str = ""
    """mfdiffuser version that wrote the file."""
    checksum: str = ""
    """sha256 over the arrays (see docs/datasets.md); identifies the data."""
    split: str = ""
    """Split of the data: ``test``, ``validation`` (:mod:`mfdiffuser.splits`) or empty (none named)."""
    view_size: int = 0
    """V, trailing features of every state that are an image view (values in [0, 1]), stored apart as
    bytes (``views``, see :data:`VIEW_LEVELS`); 0: none (all S features in ``states``)."""

    @property
    def all_agents_stored(self) -> bool:
        return self.stored_agents == self.n_agents

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetMeta:
        """Rebuild from :meth:`to_dict` output (e.g. after a JSON round trip); unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DatasetError(f"unknown dataset metadata field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DatasetError(f"incomplete dataset metadata: {exc}") from None

    def normalized_score(self, per_agent_return: float | np.ndarray) -> float | np.ndarray:
        """``100 * (R - R_random) / (R_expert - R_random)`` with this dataset's reference returns."""
        try:
            return normalized_score(per_agent_return, self.ref_returns["random"], self.ref_returns["expert"])
        except ValueError as e:
            raise DatasetError(f"reference returns do not define a scale: {e}") from None


@dataclass(frozen=True)
class Episode:
    """One episode trimmed to its length L, for the K stored agents (``agent_index`` into 0..N-1)."""

    states: np.ndarray
    """``[L+1, K, S]`` float32."""
    actions: np.ndarray
    """``[L, K]`` int64."""
    rewards: np.ndarray
    """``[L, K]`` float32."""
    alive: np.ndarray
    """``[L+1, K]`` bool: agent alive in state s_t."""
    summaries: np.ndarray
    """``[L+1, P]`` float32: phi(mu_t) over all N agents."""
    pop_reward: np.ndarray
    """``[L]`` float64: mean reward over all N agents at each step."""
    agent_index: np.ndarray
    """``[K]`` int: which of the N agents were stored."""
    env_seed: int
    policy_seed: int
    quality: str
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    @property
    def per_agent_return(self) -> float:
        """Mean over all N agents of the undiscounted episode return."""
        return float(self.pop_reward.sum())


def action_dtype(n_actions: int) -> np.dtype:
    """Smallest integer dtype that stores actions 0..A-1."""
    if n_actions <= 256:
        return np.dtype(np.uint8)
    if n_actions <= 2**15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def expected_shapes(meta: DatasetMeta) -> dict[str, tuple[int, ...]]:
    """Shape of every array of a dataset with metadata ``meta``."""
    e, t, k = meta.n_episodes, meta.horizon, meta.stored_agents
    return {
        "states": (e, t + 1, k, meta.state_size - meta.view_size),
        **({"views": (e, t + 1, k, meta.view_size)} if meta.view_size else {}),
        "actions": (e, t, k),
        "rewards": (e, t, k),
        "alive": (e, t + 1, k),
        "summaries": (e, t + 1, meta.summary_size),
        "pop_reward": (e, t),
        "length": (e,),
        "terminated": (e,),
        "truncated": (e,),
        "quality": (e,),
        "env_seed": (e,),
        "policy_seed": (e,),
        "agent_index": (e, k),
    }


def chunk_episodes_and_steps(meta: DatasetMeta, target_bytes: int = 1 << 20) -> tuple[int, int]:
    """Chunk layout ``(episodes per chunk, steps per chunk)`` from the size of one episode's states.

    Small episodes are grouped so that a chunk holds about ``target_bytes`` of raw states; an episode
    larger than that is split along time. Every step array uses the same episode grouping, so a
    block of whole chunks is a block of whole episodes.
    """
    step_bytes = max(1, meta.stored_agents * meta.state_size * 4)
    episode_bytes = step_bytes * (meta.horizon + 1)
    if episode_bytes <= target_bytes:
        return max(1, min(meta.n_episodes, target_bytes // episode_bytes)), meta.horizon + 1
    return 1, max(1, min(meta.horizon + 1, target_bytes // step_bytes))


def chunk_shape(name: str, shape: tuple[int, ...], ce: int, ct: int) -> tuple[int, ...]:
    """HDF5 chunk of array ``name`` with ``ce`` episodes and ``ct`` steps per chunk."""
    chunk = list(shape)
    chunk[0] = min(ce, shape[0])
    if name in STEP_ARRAYS or name in VIEW_ARRAYS:
        chunk[1] = max(1, min(ct, shape[1]))
    return tuple(max(1, c) for c in chunk)


class ArrayHasher:
    """Streaming checksums: sha256 of each array's C-order bytes, fed in episode order.

    The file checksum is sha256 of the lines ``<name>=<hex digest>`` (each ending in a newline) over
    the arrays in sorted name order, so one pass over episode blocks computes it for any number of arrays.
    """

    def __init__(self, names: Iterable[str] = ALL_ARRAYS) -> None:
        self._h = {name: hashlib.sha256() for name in names}

    def update(self, name: str, block: np.ndarray) -> None:
        self._h[name].update(np.ascontiguousarray(block).tobytes())

    def digests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self._h.items()}

    def checksum(self) -> str:
        text = "".join(f"{name}={digest}\n" for name, digest in sorted(self.digests().items()))
        return hashlib.sha256(text.encode()).hexdigest()


def _read_meta(f: Any, path: Path) -> DatasetMeta:
    attrs = f.attrs
    fmt = attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise DatasetError(f"{path}: not an mfdiffuser dataset (no 'format' attribute; incomplete file?)")
    version = int(attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: dataset schema version {version} is not supported "
            f"(this mfdiffuser reads version {SCHEMA_VERSION}); regenerate it with `mfd data generate`"
        )
    try:
        meta = DatasetMeta.from_dict(json.loads(attrs["meta"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable metadata ({exc})") from None
    if meta.schema_version != version:
        raise DatasetError(f"{path}: metadata says schema {meta.schema_version}, file says {version}")
    if meta.quality not in DATASET_QUALITIES:
        raise DatasetError(f"{path}: unknown quality {meta.quality!r}")
    for key in ("random", "expert"):
        if not math.isfinite(float(meta.ref_returns.get(key, math.nan))):
            raise DatasetError(f"{path}: reference return {key!r} missing or not finite")
    return meta


def _check_layout(f: Any, meta: DatasetMeta, path: Path) -> None:
    if not 0 <= meta.view_size < meta.state_size:
        raise DatasetError(f"{path}: view size {meta.view_size} not in [0, S={meta.state_size})")
    shapes = expected_shapes(meta)
    for name, (_, kind) in all_arrays(meta).items():
        if name not in f:
            raise DatasetError(f"{path}: array {name!r} is missing")
        ds = f[name]
        if tuple(ds.shape) != shapes[name]:
            raise DatasetError(
                f"{path}: array {name!r} has shape {tuple(ds.shape)}, expected {shapes[name]} from metadata"
            )
        dt = ds.dtype
        ok = {
            "f": np.issubdtype(dt, np.floating),
            "i": np.issubdtype(dt, np.integer),
            "b": dt == np.bool_,
            "S": dt.kind == "S",
            "u": dt == np.uint8,
        }[kind]
        if not ok:
            raise DatasetError(f"{path}: array {name!r} has dtype {dt}, expected kind {kind!r}")
    if meta.stored_agents > meta.n_agents or meta.stored_agents < 1:
        raise DatasetError(f"{path}: stored agents K={meta.stored_agents} not in [1, N={meta.n_agents}]")


class OfflineDataset:
    """A validated dataset file: metadata, per-episode scalars in memory, step arrays in memory or lazy.

    Step arrays are read into memory when they (plus returns-to-go) fit in ``memory_limit`` bytes;
    otherwise they stay in the file and :meth:`read_block` reads whole chunks of episodes on demand,
    so memory use does not grow with the file (the window sampler keeps a bounded pool of them).
    """

    def __init__(
        self,
        path: Path,
        f: Any,
        meta: DatasetMeta,
        in_memory: bool,
        file_attrs: dict[str, Any],
        arrays: dict[str, np.ndarray] | None = None,
        file_digest: str | None = None,
        verified: bool = False,
    ) -> None:
        self.path = path
        self.meta = meta
        self.attrs = file_attrs
        self.file_digest = file_digest
        """sha256 of the file's bytes after its header (None: written before file digests)."""
        self.verified = verified
        """Whether the file digest, array checksums and finiteness were checked when loading."""
        self._f = f
        self.in_memory = in_memory
        self.chunk_episodes = int(f["states"].chunks[0])
        self.length = f["length"][()].astype(np.int64)
        self.terminated = f["terminated"][()].astype(bool)
        self.truncated = f["truncated"][()].astype(bool)
        self.quality_labels = np.array([q.decode() for q in f["quality"][()]], dtype=object)
        self.env_seeds = f["env_seed"][()].astype(np.uint64)
        self.policy_seeds = f["policy_seed"][()].astype(np.uint64)
        self.agent_index = f["agent_index"][()].astype(np.int32)
        self.pop_reward = f["pop_reward"][()].astype(np.float64)
        self._mem: dict[str, np.ndarray] | None = None
        if in_memory:
            self._mem = arrays if arrays is not None else {name: f[name][()] for name in step_arrays(meta)}
            f.close()
            self._f = None

    # ------------------------------------------------------------ summary data
    @property
    def n_episodes(self) -> int:
        return self.meta.n_episodes

    def __len__(self) -> int:
        return self.meta.n_episodes

    @property
    def episode_returns(self) -> np.ndarray:
        """``[E]`` float64: per-agent mean undiscounted return of each episode (over all N agents)."""
        return self.pop_reward.sum(axis=1)

    def returns_by_quality(self) -> dict[str, np.ndarray]:
        """Episode returns grouped by the per-episode behaviour label."""
        rets = self.episode_returns
        return {q: rets[self.quality_labels == q] for q in sorted(set(self.quality_labels))}

    def normalized_score(self, per_agent_return: float | np.ndarray) -> float | np.ndarray:
        """``100 * (R - R_random) / (R_expert - R_random)`` with the stored reference returns."""
        return self.meta.normalized_score(per_agent_return)

    def make_env(self, **overrides: Any) -> Any:
        """Rebuild the env the data came from (``mfdiffuser.envs.make(env, **env_args)``), with overrides."""
        from mfdiffuser.envs import make

        return make(self.meta.env, **{**self.meta.env_args, **overrides})

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of the step arrays."""
        f = self._f
        if self._mem is not None:
            return int(sum(a.nbytes for a in self._mem.values()))
        return int(sum(np.prod(f[n].shape) * f[n].dtype.itemsize for n in step_arrays(self.meta)))

    # ----------------------------------------------------------------- arrays
    def read_block(self, start: int, stop: int, join: bool = True) -> dict[str, np.ndarray]:
        """Padded step arrays of episodes ``start:stop`` (``states [E', T+1, K, S]``, ...).

        Views into memory for in-memory datasets; a fresh read of whole chunks otherwise. Stored views
        come back inside ``states`` (its last V features, as :func:`join_views` decodes them), or, with
        ``join=False``, as they are stored: ``states [..., S - V]`` float32 and ``views [..., V]`` uint8.
        """
        if not 0 <= start <= stop <= self.n_episodes:
            raise IndexError(f"episode block {start}:{stop} outside 0:{self.n_episodes}")
        if self._mem is not None:
            block = {name: a[start:stop] for name, a in self._mem.items()}
            return self._with_views(block) if join else block
        if self._f is None:
            raise DatasetError(f"{self.path}: dataset is closed")
        out = {}
        for name in step_arrays(self.meta):
            try:
                out[name] = self._f[name][start:stop]
            except OSError as exc:
                raise DatasetError(
                    f"{self.path}: array {name!r} episodes {start}:{stop} unreadable (corrupted file?): "
                    f"{str(exc).splitlines()[0]}"
                ) from None
        return self._with_views(out) if join else out

    @staticmethod
    def _with_views(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "views" in block:
            block["states"] = join_views(block["states"], block.pop("views"))
        return block

    def episode(self, i: int) -> Episode:
        """Episode ``i`` trimmed to its length."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range for {self.n_episodes} episodes")
        i %= self.n_episodes
        block = self.read_block(i, i + 1)
        n = int(self.length[i])
        return Episode(
            states=np.array(block["states"][0, : n + 1]),
            actions=block["actions"][0, :n].astype(np.int64),
            rewards=np.array(block["rewards"][0, :n]),
            alive=np.array(block["alive"][0, : n + 1]),
            summaries=np.array(block["summaries"][0, : n + 1]),
            pop_reward=self.pop_reward[i, :n].copy(),
            agent_index=self.agent_index[i].copy(),
            env_seed=int(self.env_seeds[i]),
            policy_seed=int(self.policy_seeds[i]),
            quality=str(self.quality_labels[i]),
            terminated=bool(self.terminated[i]),
            truncated=bool(self.truncated[i]),
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> OfflineDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"OfflineDataset({str(self.path)!r}, env={m.env!r}, N={m.n_agents}, K={m.stored_agents}, "
            f"quality={m.quality!r}, episodes={m.n_episodes}, T={m.horizon}, in_memory={self.in_memory})"
        )


def _verify(
    f: Any, meta: DatasetMeta, path: Path, stored: dict[str, str], keep: dict[str, np.ndarray] | None = None
) -> None:
    """Stream every array in chunk-aligned episode blocks: checksums and finiteness.

    With ``keep`` (a dict of preallocated step arrays), the blocks read are also copied into it, so
    an in-memory load reads the file once.
    """
    names = all_arrays(meta)
    hasher = ArrayHasher(names)
    ce = int(f["states"].chunks[0])
    e = meta.n_episodes
    for start in range(0, e, ce):
        stop = min(e, start + ce)
        for name, (_, kind) in names.items():
            try:
                block = f[name][start:stop]
            except OSError as exc:
                raise DatasetError(
                    f"{path}: array {name!r} is corrupted (episodes {start}:{stop} unreadable: "
                    f"{str(exc).splitlines()[0]})"
                ) from None
            hasher.update(name, block)
            if keep is not None and name in keep:
                keep[name][start:stop] = block
            if kind == "f" and not np.isfinite(block).all():
                bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
                raise DatasetError(f"{path}: array {name!r} holds NaN or inf (episode {bad})")
    digests = hasher.digests()
    for name, digest in digests.items():
        if stored.get(name) != digest:
            raise DatasetError(f"{path}: checksum mismatch in array {name!r} (file corrupted or modified)")
    if hasher.checksum() != meta.checksum:
        raise DatasetError(f"{path}: checksum mismatch (file corrupted or modified)")


def check_file_digest(path: str | Path) -> str:
    """Stream the dataset file at ``path`` and compare it with the digest in its header.

    Returns:
        The verified sha256 of the file's bytes after its header.

    Raises:
        DatasetError: the file has no digest (written before file digests), or its header, length or
            bytes do not match.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
        if head and not b"mfdiffuser ".startswith(head) and head != HDF5_SIGNATURE:
            raise DatasetError(
                f"{path}: not an mfdiffuser dataset: neither an HDF5 file nor one with a digest header "
                "(damaged?)"
            )
        if head == HDF5_SIGNATURE:
            raise DatasetError(
                f"{path}: has no file digest (written before datasets carried one); "
                f"{_RECOVER}, or load it unchecked with --no-verify (verify=False)"
            )
        return verify_file(path, DIGEST_KIND, "dataset", _RECOVER).sha256
    except IntegrityError as exc:
        raise DatasetError(str(exc)) from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def load_dataset(
    path: str | Path,
    *,
    verify: bool = True,
    in_memory: bool | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> OfflineDataset:
    """Open and validate a dataset written by ``mfd data generate``.

    Args:
        path: the ``.h5`` file.
        verify: stream the file's bytes through sha256 and compare with the digest in its header
            before HDF5 opens it (a file without a digest is refused), then read every array once
            to check the per-array checksums and that floats are finite. Shapes, dtypes, schema
            version and metadata are always checked. ``False`` skips both passes: only for files
            you trust (HDF5 parses them unchecked).
        in_memory: load step arrays into memory (True), keep them in the file (False), or decide by
            size (None: in memory when step arrays plus returns-to-go fit in ``memory_limit`` bytes).
        memory_limit: byte threshold of the automatic choice.

    Raises:
        DatasetError: missing or unreadable file, unfinished generation, no or wrong file digest,
            wrong schema version, bad metadata, wrong shapes or dtypes, a checksum mismatch or
            non-finite values.
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        if (path / "manifest.json").exists():
            raise DatasetError(
                f"{path}: an unfinished generation work directory, not a dataset; "
                "rerun the same `mfd data generate` command to finish it"
            )
        raise DatasetError(f"{path}: is a directory, not a dataset file")
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    if not path.is_file():  # reading a pipe would wait for a writer; a device may never end
        raise DatasetError(f"{path}: not a regular file (a pipe or a device), not a dataset file")
    if verify:
        digest: str | None = check_file_digest(path)
    else:
        try:
            seal = read_seal(path)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
        digest = seal.sha256 if seal is not None and seal.kind == DIGEST_KIND else None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(
            f"{path}: not a readable HDF5 file (truncated or corrupted?): {str(exc).splitlines()[0]}"
        ) from None
    try:
        meta = _read_meta(f, path)
        _check_layout(f, meta, path)
        stored = {name: str(f[name].attrs.get(CHECKSUM_ALGORITHM, "")) for name in all_arrays(meta)}
        length = f["length"][()]
        if length.size and (length.min() < 1 or length.max() > meta.horizon):
            raise DatasetError(f"{path}: episode lengths must lie in [1, T={meta.horizon}]")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        step_bytes = sum(int(np.prod(f[n].shape)) * f[n].dtype.itemsize for n in step_arrays(meta))
        rtg_bytes = meta.n_episodes * (meta.horizon + 1) * meta.stored_agents * 4
        if in_memory is None:
            in_memory = step_bytes + rtg_bytes <= memory_limit
        keep = {n: np.empty(f[n].shape, dtype=f[n].dtype) for n in step_arrays(meta)} if in_memory else None
        if verify:
            _verify(f, meta, path, stored, keep)
        elif keep is not None:
            for name in step_arrays(meta):
                f[name].read_direct(keep[name])
        return OfflineDataset(path, f, meta, bool(in_memory), attrs, keep, digest, verify)
    except DatasetError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        f.close()
        raise DatasetError(f"{path}: unreadable dataset ({type(exc).__name__}: {exc})") from None


@dataclass
class EpisodeRecord:
    """A generated episode padded to T steps, for the K stored agents (the generator's output)."""

    states: np.ndarray
    """``[T+1, K, S]`` float32; states past the end repeat the last state."""
    actions: np.ndarray
    """``[T, K]`` action dtype; zero past the end."""
    rewards: np.ndarray
    """``[T, K]`` float32; zero past the end."""
    alive: np.ndarray
    """``[T+1, K]`` bool; false past the end."""
    summaries: np.ndarray
    """``[T+1, P]`` float32; past the end repeats the last summary."""
    pop_reward: np.ndarray
    """``[T]`` float64: mean reward over all N agents; zero past the end."""
    length: int
    terminated: bool
    truncated: bool
    quality: str
    env_seed: int
    policy_seed: int
    agent_index: np.ndarray
    """``[K]`` int32."""
    extra: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The episode as one row of every array in :data:`ALL_ARRAYS`, with on-disk dtypes."""
        return {
            "states": self.states,
            "actions": self.actions,
            "rewards": self.rewards,
            "alive": self.alive,
            "summaries": self.summaries,
            "pop_reward": self.pop_reward,
            "length": np.asarray(self.length, dtype=np.int32),
            "terminated": np.asarray(self.terminated, dtype=bool),
            "truncated": np.asarray(self.truncated, dtype=bool),
            "quality": np.asarray(self.quality.encode(), dtype="S8"),
            "env_seed": np.asarray(self.env_seed, dtype=np.uint64),
            "policy_seed": np.asarray(self.policy_seed, dtype=np.uint64),
            "agent_index": self.agent_index.astype(np.int32),
        }


def hdf5_write_error(exc: RuntimeError, path: str | Path) -> OSError | None:
    """The ``OSError`` behind an HDF5 write failure that h5py reports as a ``RuntimeError``.

    HDF5's message names the failed system call's ``errno`` (e.g. 28, no space left on device);
    None when it names none (the error did not come from writing the file).
    """
    found = re.search(r"file write failed:.*?errno = (\d+)", str(exc), re.DOTALL)
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


class _WriteOnce(io.FileIO):
    """The file HDF5 writes a dataset through: the first failed write is kept, later ones skipped.

    HDF5 cannot recover from a failed write (a full disk, a file size limit): the file stays open
    inside the library, which crashes the process when it exits (h5py issue 914). Through this file
    object (h5py's ``fileobj`` driver) HDF5 never sees a failure: after the first one, writes and
    truncations only move the position, and :attr:`error` holds the failure for the caller to raise
    once HDF5 has closed the file.
    """

    error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        if self.error is None:
            try:
                done = 0
                while done < size:  # a short write is retried: the next call reports why it stopped
                    n = super().write(view[done:])
                    if not n:
                        raise OSError(errno.EIO, os.strerror(errno.EIO))
                    done += n
                return size
            except OSError as exc:
                self.error = exc
        self.seek(size, os.SEEK_CUR)
        return size

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def flush(self) -> None:
        if self.error is None:
            try:
                super().flush()
            except OSError as exc:
                self.error = exc

    def check(self, path: str | Path) -> None:
        """Raise the kept failure as an ``OSError`` naming ``path`` (nothing if every write succeeded)."""
        if self.error is not None:
            code = self.error.errno or 0
            raise OSError(code, self.error.strerror or os.strerror(code), str(path))


def write_dataset(
    path: str | Path,
    meta: DatasetMeta,
    episodes: Iterator[dict[str, np.ndarray]],
    *,
    compression: str | None = "gzip",
    compression_level: int = 4,
    chunk_bytes: int = 1 << 20,
    extra_attrs: dict[str, Any] | None = None,
) -> str:
    """Write a dataset file from per-episode rows (``EpisodeRecord.arrays()``) in episode order.

    Episodes are buffered one chunk row at a time, so memory stays at one chunk row of episodes.
    Writes to ``path`` directly: callers wanting atomicity pass a temporary path and rename it. The
    ``format`` attribute is written last, and the file digest (in the user block) after the HDF5
    file is closed, so a file cut short never loads.

    Args:
        path: file to write.
        meta: the dataset's metadata (its checksum and library version are filled in here).
        episodes: one dict of arrays per episode, in order.
        compression: HDF5 filter (``"gzip"``, ``"lzf"`` or None); chunks always carry fletcher32.
        compression_level: gzip level.
        chunk_bytes: target raw size of a chunk of states (see :func:`chunk_episodes_and_steps`).
        extra_attrs: additional root attributes (not part of the checksum).

    Returns:
        The checksum (also stored in the metadata).
    """
    import h5py

    from mfdiffuser import __version__

    shapes = expected_shapes(meta)
    ce, ct = chunk_episodes_and_steps(meta, chunk_bytes)
    dtypes: dict[str, Any] = {
        "states": np.float32,
        "actions": action_dtype(meta.n_actions),
        "rewards": np.float32,
        "alive": np.bool_,
        "summaries": np.float32,
        "pop_reward": np.float64,
        "length": np.int32,
        "terminated": np.bool_,
        "truncated": np.bool_,
        "quality": "S8",
        "env_seed": np.uint64,
        "policy_seed": np.uint64,
        "agent_index": np.int32,
        "views": np.uint8,
    }
    names = all_arrays(meta)
    hasher = ArrayHasher(names)
    filters: dict[str, Any] = {"fletcher32": True}
    if compression:
        filters.update(compression=compression, shuffle=True)
        if compression == "gzip":
            filters["compression_opts"] = compression_level
    sink = _WriteOnce(path, "w+")
    try:
        with sink, h5py.File(sink, "w", userblock_size=HEADER_SIZE) as f:
            dsets = {
                name: f.create_dataset(
                    name, shape=shapes[name], dtype=dtypes[name],
                    chunks=chunk_shape(name, shapes[name], ce, ct), **filters,
                )
                for name in names
            }
            buffer: list[dict[str, np.ndarray]] = []
            start = 0

            def flush() -> None:
                nonlocal start, buffer
                if not buffer:
                    return
                stop = start + len(buffer)
                blocks = {name: np.stack([row[name] for row in buffer]) for name in ALL_ARRAYS}
                if meta.view_size:
                    blocks["states"], blocks["views"] = split_views(blocks["states"], meta.view_size)
                for name, ds in dsets.items():
                    block = blocks[name].astype(dtypes[name], copy=False)
                    ds[start:stop] = block
                    hasher.update(name, block)
                sink.check(path)  # stop at the first failed write rather than compress the rest
                start, buffer = stop, []

            for row in episodes:
                buffer.append(row)
                if len(buffer) == ce:
                    flush()
            flush()
            if start != meta.n_episodes:
                raise ValueError(f"got {start} episodes, metadata says {meta.n_episodes}")
            for name, digest in hasher.digests().items():
                dsets[name].attrs[CHECKSUM_ALGORITHM] = digest
            checksum = hasher.checksum()
            final = dataclasses.replace(meta, checksum=checksum, library_version=__version__)
            for key, value in (extra_attrs or {}).items():
                f.attrs[key] = value
            f.attrs["meta"] = json.dumps(final.to_dict(), sort_keys=True)
            f.attrs["checksum_algorithm"] = CHECKSUM_ALGORITHM
            f.attrs["checksum"] = checksum
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["format"] = FORMAT
    except RuntimeError as exc:  # h5py raises a failed write (disk full, file too large) as RuntimeError
        error = hdf5_write_error(exc, path)
        if error is None:
            raise
        raise error from None
    sink.check(path)
    seal_file(path, DIGEST_KIND)
    return checksum
