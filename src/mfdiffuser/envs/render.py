"""Matplotlib pictures of a battle: one PNG frame of the current state, or a GIF of a whole episode.

Each team is drawn as coloured squares on the map (ours blue, the opponent red), shaded by health.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np

from mfdiffuser.utils import atomic_path, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mfdiffuser.envs.base import PopulationPolicy
    from mfdiffuser.envs.battle import Battle

TEAM_COLOURS = ("tab:blue", "tab:red")


class Frame(NamedTuple):
    """Both teams' alive agents at one step: ``pos[side]`` is ``[n_alive, 2]``, ``hp[side]`` ``[n_alive]``."""

    t: int
    pos: tuple[np.ndarray, np.ndarray]
    hp: tuple[np.ndarray, np.ndarray]


def snapshot(env: Battle) -> Frame:
    """The current state of ``env`` as a :class:`Frame`."""
    alive = (env.alive(), env.opponent_alive())
    pos = tuple(env.positions(s)[alive[s]] for s in range(2))
    hp = tuple(env.health(s)[alive[s]] for s in range(2))
    return Frame(env.t, pos, hp)


def draw_frame(ax: Axes, frame: Frame, map_size: int, *, title: str | None = None) -> None:
    """Draw a frame on ``ax``: x to the right, y downward as in MAgent2's views, walls in grey."""
    from matplotlib.colors import to_rgba

    ax.clear()
    ax.set_xlim(-0.5, map_size - 0.5)
    ax.set_ylim(map_size - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.add_patch(_wall(map_size))
    # marker area in points^2 so that one square covers about one cell of the map
    width_pt = ax.get_window_extent().width * 72.0 / ax.figure.dpi
    marker = max(0.5, 0.8 * (width_pt / map_size) ** 2)
    for side, colour in enumerate(TEAM_COLOURS):
        p, hp = frame.pos[side], frame.hp[side]
        rgba = np.tile(to_rgba(colour), (len(p), 1))
        rgba[:, 3] = 0.25 + 0.75 * np.clip(hp, 0.0, 1.0)
        ax.scatter(p[:, 0], p[:, 1], s=marker, c=rgba, marker="s", linewidths=0)
    counts = f"ours {len(frame.pos[0])}  vs  opponent {len(frame.pos[1])}"
    ax.set_title(f"{title + '  ' if title else ''}t = {frame.t}   {counts}", fontsize=9)


def _wall(map_size: int):
    from matplotlib.patches import Rectangle

    # the border cells are wall: draw the walkable area's frame
    return Rectangle((0.5, 0.5), map_size - 2, map_size - 2, fill=False, edgecolor="0.6", linewidth=1.0)


def render_frame(env: Battle, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Save the current state of ``env`` as a PNG at ``path`` (written atomically); return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5.3), dpi=100)
    try:
        draw_frame(ax, snapshot(env), env.map_size, title=title)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def record_episode(env: Battle, policy: PopulationPolicy, *, seed: int = 0, every: int = 1) -> list[Frame]:
    """Play one episode of ``policy`` from ``env.reset(seed=seed)``; keep a frame every ``every`` steps."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every!r}")
    obs, info = env.reset(seed=seed)
    policy.reset(env, np.random.default_rng(seed))
    frames = [snapshot(env)]
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(policy.act(obs, info))
        done = term or trunc
        if done or env.t % every == 0:
            frames.append(snapshot(env))
    return frames


def save_gif(
    frames: list[Frame],
    map_size: int,
    path: str | os.PathLike[str],
    *,
    fps: float = 8.0,
    title: str | None = None,
) -> Path:
    """Write ``frames`` as an animated GIF at ``path`` (atomically); return the path."""
    if not frames:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(4, 4.3), dpi=80)
    images = []
    try:
        for frame in frames:
            draw_frame(ax, frame, map_size, title=title)
            fig.canvas.draw()
            rgba = np.asarray(cast("FigureCanvasAgg", fig.canvas).buffer_rgba())
            images.append(Image.fromarray(rgba[..., :3].copy()))
    finally:
        plt.close(fig)
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )
    return Path(path)


def render_episode(
    env: Battle,
    policy: PopulationPolicy,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    every: int = 2,
    fps: float = 8.0,
) -> Path:
    """Play an episode and save it: a GIF when ``path`` ends in ``.gif``, else a PNG of 4 snapshots."""
    frames = record_episode(env, policy, seed=seed, every=every)
    title = f"{env.opponent} opponent"
    if str(path).lower().endswith(".gif"):
        return save_gif(frames, env.map_size, path, fps=fps, title=title)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    picks = np.unique(np.linspace(0, len(frames) - 1, 4).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.5), dpi=100, squeeze=False)
    try:
        for ax, i in zip(axes[0], picks, strict=True):
            draw_frame(ax, frames[i], env.map_size)
        fig.suptitle(f"battle, {env.n_agents} per side, {title}", fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)
