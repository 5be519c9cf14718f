"""The test and validation splits: disjoint integer ranges of dataset seeds and evaluation episode seeds.

Every choice (hyperparameters, defaults, budgets) is made on the ``validation`` split; reported tables
use the ``test`` split. Each split owns its own range of dataset master seeds and of evaluation
episode seeds, and no two ranges overlap, so the splits share no dataset and no evaluation episode by
construction. Episode ``i`` of a split is the same for every method (episode 0 of evaluation seed
``episode_seed(split, i)`` in :func:`mfdiffuser.eval.rollout.episode_seeds`), so methods can be
compared paired on shared episodes. A grid evaluates training seed ``s`` on its own block of the
stream (episodes ``s k .. s k + k - 1`` for ``k`` episodes per seed): a row's seeds face different
episodes, and every method's seed ``s`` faces the same ones.

Reference returns (random and expert behaviour at each N) are rolled out on their own stream
(:data:`mfdiffuser.eval.rollout.REFERENCE_STREAM`), which belongs to neither split.
"""

from __future__ import annotations

SPLITS: tuple[str, ...] = ("test", "validation")
"""Split names: ``test`` for reported tables, ``validation`` for every choice."""

STREAM_SIZE = 1_000_000
"""Seeds in each range: a grid's ``data.seed`` offset and its evaluation episodes must stay below it."""

_DATA_BASE = {"test": 1_000_000, "validation": 2_000_000}
_EPISODE_BASE = {"test": 3_000_000, "validation": 4_000_000}


def check_split(split: object) -> str:
    """Return ``split`` if it names a split.

    Raises:
        ValueError: anything but ``test`` or ``validation``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return str(split)


def _offset(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < STREAM_SIZE:
        raise ValueError(f"{what} must be an integer in [0, {STREAM_SIZE:,}), got {value!r}")
    return value


def data_seed(split: str, offset: int = 0) -> int:
    """Master seed of dataset number ``offset`` of ``split`` (``data.seed`` of a grid is the offset)."""
    return _DATA_BASE[check_split(split)] + _offset(offset, "data seed")


def episode_seed(split: str, index: int) -> int:
    """Evaluation seed of episode ``index`` of ``split``."""
    return _EPISODE_BASE[check_split(split)] + _offset(index, "evaluation episode index")


def episode_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """Evaluation seeds of episodes ``start .. start + count - 1`` of ``split`` (the same for every method).

    Raises:
        ValueError: the episodes run past the split's stream of ``STREAM_SIZE``.
    """
    if start < 0 or start + count > STREAM_SIZE:
        raise ValueError(
            f"evaluation episodes {start:,}..{start + count - 1:,} run past the split's "
            f"{STREAM_SIZE:,} episodes"
        )
    return [episode_seed(split, i) for i in range(start, start + count)]


def split_of_data_seed(seed: int) -> str | None:
    """The split whose dataset-seed range holds ``seed``, or None."""
    return next((s for s, base in _DATA_BASE.items() if base <= seed < base + STREAM_SIZE), None)


def split_of_episode_seed(seed: int) -> str | None:
    """The split whose evaluation-seed range holds ``seed``, or None."""
    return next((s for s, base in _EPISODE_BASE.items() if base <= seed < base + STREAM_SIZE), None)
