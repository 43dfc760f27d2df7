"""Episodes on disk in the LeRobotDataset v3.0 layout (no ROS, no lerobot import).

    <root>/meta/info.json                                  schema, fps, path templates
    <root>/meta/stats.json                                 mean/std/min/max/count per feature
    <root>/meta/tasks.parquet                              task text -> task_index
    <root>/meta/episodes/chunk-000/file-000.parquet        one row per episode (lengths, offsets)
    <root>/data/chunk-CCC/file-FFF.parquet                 one row per frame
    <root>/videos/<camera key>/chunk-CCC/file-FFF.mp4      H.264, one frame per row

Each episode is written to its own data and video file (a valid v3 packing: `file_index` per
episode, 1000 files per chunk), and the metadata is rewritten after every episode, so a recorder
that dies loses at most the episode in flight, and `LeRobotWriter(root, resume=True)` appends to
an existing dataset. Frames are at the control rate (`fps`); a camera slower than that repeats its
latest image, which is what the policy saw. Beyond the standard columns, `next.success` marks the
last frame of a successful episode and the episodes table has a `success` column and an
`expert_from` one (the first frame whose action is the expert's: 0 but in takeover episodes).
Where the collector knows the world's state (simulation), `observation.environment_state` holds it
per frame (LeRobot's key for object state; here the position of the object the instruction acts
on).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ENV_STATE_KEY = "observation.environment_state"
VIDEO_CODEC = "libx264"   # readable by every ffmpeg/pyav build (LeRobot's own default is AV1)


class DatasetError(ValueError):
    """The dataset on disk, or an episode given to the writer, is not what it should be."""


@dataclass
class Episode:
    """One demonstration in memory. `images[camera]` holds one RGB frame per row of `states`."""

    task: str
    states: np.ndarray                       # (T, D) measured joint positions
    actions: np.ndarray                      # (T, D) commanded joint targets
    images: Mapping[str, Sequence[np.ndarray]]
    success: bool = False
    environment_state: np.ndarray | None = None   # (T, E) world state per frame, when known
    # First frame whose action is the expert's. A takeover episode (DAgger-style) starts with
    # the policy being corrected driving; its frames are kept as context, never as labels.
    expert_from: int = 0

    def __post_init__(self):
        self.states = np.asarray(self.states, np.float32)
        self.actions = np.asarray(self.actions, np.float32)
        if self.environment_state is not None:
            self.environment_state = np.asarray(self.environment_state, np.float32)
            if (self.environment_state.ndim != 2
                    or len(self.environment_state) != len(self.states)
                    or not np.all(np.isfinite(self.environment_state))):
                raise DatasetError(f"environment_state {self.environment_state.shape} must be a "
                                   f"finite (T, E) array with T = {len(self.states)}")
        if self.states.ndim != 2 or self.states.shape != self.actions.shape or not len(self.states):
            raise DatasetError(f"states {self.states.shape} and actions {self.actions.shape} must "
                               "be equal, non-empty (T, D) arrays")
        if not (np.all(np.isfinite(self.states)) and np.all(np.isfinite(self.actions))):
            raise DatasetError("states or actions contain NaN or inf")
        if not self.task:
            raise DatasetError("an episode needs its task (the instruction)")
        if not 0 <= self.expert_from < len(self.states):
            raise DatasetError(f"expert_from {self.expert_from} is not a frame of the "
                               f"{len(self.states)}-frame episode")
        for camera, frames in self.images.items():
            if len(frames) != len(self.states):
                raise DatasetError(f"camera {camera!r} has {len(frames)} frames for "
                                   f"{len(self.states)} steps")

    def __len__(self) -> int:
        return len(self.states)


def _file_location(episode_index: int) -> dict[str, int]:
    return {"chunk_index": episode_index // CHUNKS_SIZE, "file_index": episode_index % CHUNKS_SIZE}


def _feature_stats(values: np.ndarray) -> dict[str, list]:
    v = np.asarray(values, np.float64)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [int(len(v))]}


def _merge_stats(parts: list[dict[str, list]]) -> dict[str, list]:
    """Pooled statistics of several per-episode ones (exact for mean and std)."""
    counts = np.array([p["count"][0] for p in parts], np.float64)
    means = np.array([p["mean"] for p in parts], np.float64)
    var = np.array([p["std"] for p in parts], np.float64) ** 2
    shape = (-1,) + (1,) * (means.ndim - 1)
    w = counts.reshape(shape) / counts.sum()
    mean = (w * means).sum(0)
    pooled = (w * (var + (means - mean) ** 2)).sum(0)
    return {"min": np.min([p["min"] for p in parts], 0).tolist(),
            "max": np.max([p["max"] for p in parts], 0).tolist(),
            "mean": mean.tolist(), "std": np.sqrt(pooled).tolist(), "count": [int(counts.sum())]}


def _image_stats(frames: Sequence[np.ndarray], samples: int = 10) -> dict[str, list]:
    """Per-channel statistics of a few frames, in LeRobot's (3, 1, 1) layout and 0..1 scale."""
    pick = np.linspace(0, len(frames) - 1, min(samples, len(frames))).astype(int)
    pixels = np.stack([frames[i] for i in pick]).reshape(-1, 3) / 255.0
    stats = _feature_stats(pixels)
    out = {k: np.asarray(v).reshape(3, 1, 1).tolist() for k, v in stats.items() if k != "count"}
    out["count"] = [len(pick)]
    return out


class LeRobotWriter:
    """Appends episodes to a LeRobotDataset v3.0 directory."""

    def __init__(self, root: str | Path, fps: float, joint_names: Sequence[str],
                 cameras: Sequence[str], image_size: tuple[int, int], robot_type: str,
                 resume: bool = False, environment_names: Sequence[str] = ()):
        self.root = Path(root)
        self.fps = float(fps)
        self.joint_names = list(joint_names)
        self.environment_names = list(environment_names)
        self.cameras = list(cameras)
        self.height, self.width = (int(image_size[0]), int(image_size[1]))
        self.robot_type = robot_type
        info_path = self.root / "meta" / "info.json"
        self._episodes: list[dict] = []
        self._tasks: dict[str, int] = {}
        self._stats: list[dict[str, dict]] = []
        if info_path.exists():
            if not resume:
                raise DatasetError(f"{self.root} already holds a dataset; pass resume=True to "
                                   "append to it, or choose another directory")
            self._load_existing()
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ existing data

    def _load_existing(self) -> None:
        dataset = LeRobotDataset(self.root)
        info = dataset.info
        if (info["fps"] != self.fps or dataset.cameras != self.cameras
                or dataset.joint_names != self.joint_names
                or dataset.environment_names != self.environment_names):
            raise DatasetError(f"cannot append to {self.root}: its fps, cameras, joints or "
                               f"environment state differ (fps {info['fps']}, cameras "
                               f"{dataset.cameras}, environment {dataset.environment_names})")
        self._episodes = dataset.episodes
        self._tasks = dict(dataset.tasks)
        stats_path = self.root / "meta" / "episode_stats.json"
        self._stats = json.loads(stats_path.read_text()) if stats_path.exists() else []

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return sum(e["length"] for e in self._episodes)

    # ------------------------------------------------------------------ writing

    def features(self) -> dict[str, dict]:
        d = len(self.joint_names)
        feats = {
            STATE_KEY: {"dtype": "float32", "shape": [d], "names": self.joint_names},
            ACTION_KEY: {"dtype": "float32", "shape": [d], "names": self.joint_names},
        }
        if self.environment_names:
            feats[ENV_STATE_KEY] = {"dtype": "float32", "shape": [len(self.environment_names)],
                                    "names": self.environment_names}
        for cam in self.cameras:
            feats[IMAGE_PREFIX + cam] = {
                "dtype": "video", "shape": [self.height, self.width, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.height": self.height, "video.width": self.width,
                         "video.codec": "h264", "video.pix_fmt": "yuv420p",
                         "video.is_depth_map": False, "video.fps": self.fps,
                         "video.channels": 3, "has_audio": False}}
        for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"),
                           ("episode_index", "int64"), ("index", "int64"),
                           ("task_index", "int64"), ("next.done", "bool"),
                           ("next.success", "bool")):
            feats[key] = {"dtype": dtype, "shape": [1], "names": None}
        return feats

    def add_episode(self, episode: Episode) -> int:
        """Write one episode (data, videos, then metadata); returns its index."""
        missing = set(self.cameras) - set(episode.images)
        if missing:
            raise DatasetError(f"episode has no frames for cameras {sorted(missing)}")
        if episode.states.shape[1] != len(self.joint_names):
            raise DatasetError(f"episode has {episode.states.shape[1]} joints, the dataset "
                               f"{len(self.joint_names)}")
        env = episode.environment_state
        if self.environment_names and (env is None or env.shape[1] != len(self.environment_names)):
            raise DatasetError(f"the dataset records environment state {self.environment_names}; "
                               f"the episode has {None if env is None else env.shape[1]} values")
        index = len(self._episodes)
        loc = _file_location(index)
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        n = len(episode)
        start = self.num_frames
        timestamps = (np.arange(n) / self.fps).astype(np.float32)
        done = np.zeros(n, bool)
        done[-1] = True
        table = pa.table({
            STATE_KEY: pa.array(list(episode.states), type=pa.list_(pa.float32())),
            ACTION_KEY: pa.array(list(episode.actions), type=pa.list_(pa.float32())),
            "timestamp": timestamps,
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, index, np.int64),
            "index": np.arange(start, start + n, dtype=np.int64),
            "task_index": np.full(n, task_index, np.int64),
            "next.done": done,
            "next.success": done & bool(episode.success),
        })
        if self.environment_names:
            table = table.append_column(ENV_STATE_KEY, pa.array(list(env), pa.list_(pa.float32())))
        data_path = self.root / DATA_PATH.format(**loc)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_path)
        row = {"episode_index": index, "tasks": [episode.task], "length": n,
               "success": bool(episode.success), "expert_from": int(episode.expert_from),
               "data/chunk_index": loc["chunk_index"],
               "data/file_index": loc["file_index"], "dataset_from_index": start,
               "dataset_to_index": start + n,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        stats = {STATE_KEY: _feature_stats(episode.states),
                 ACTION_KEY: _feature_stats(episode.actions)}
        if self.environment_names:
            stats[ENV_STATE_KEY] = _feature_stats(env)
        for cam in self.cameras:
            key = IMAGE_PREFIX + cam
            self._write_video(self.root / VIDEO_PATH.format(video_key=key, **loc),
                              episode.images[cam])
            row.update({f"videos/{key}/chunk_index": loc["chunk_index"],
                        f"videos/{key}/file_index": loc["file_index"],
                        f"videos/{key}/from_timestamp": 0.0,
                        f"videos/{key}/to_timestamp": n / self.fps})
            stats[key] = _image_stats(episode.images[cam])
        self._episodes.append(row)
        self._stats.append(stats)
        self._write_metadata()
        return index

    def _write_video(self, path: Path, frames: Sequence[np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with imageio.get_writer(path, fps=self.fps, codec=VIDEO_CODEC, quality=9,
                                pixelformat="yuv420p", macro_block_size=8,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                frame = np.asarray(frame)
                if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
                    raise DatasetError(f"video frames must be uint8 ({self.height}, {self.width}, "
                                       f"3), got {frame.dtype} {frame.shape}")
                writer.append_data(frame)

    def _write_metadata(self) -> None:
        meta = self.root / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), self.root / EPISODES_PATH)
        pq.write_table(pa.table({"task_index": list(self._tasks.values()),
                                 "task": list(self._tasks)}), meta / "tasks.parquet")
        keys = self._stats[0].keys()
        stats = {k: _merge_stats([s[k] for s in self._stats]) for k in keys}
        (meta / "stats.json").write_text(json.dumps(stats, indent=1))
        (meta / "episode_stats.json").write_text(json.dumps(self._stats))
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": self.num_episodes, "total_frames": self.num_frames,
            "total_tasks": len(self._tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": self.fps,
            "splits": {"train": f"0:{self.num_episodes}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH, "features": self.features(),
        }
        tmp = meta / "info.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(meta / "info.json")   # info.json last: it says how many episodes are whole


class LeRobotDataset:
    """Reads a LeRobotDataset v3.0 directory (ours, or one written by LeRobot with H.264/AV1)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise DatasetError(f"{self.root} is not a LeRobotDataset (no meta/info.json)")
        self.info = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DatasetError(f"{self.root} is LeRobotDataset {version or '?'}; only v3.x is read")
        episodes = pq.read_table(self.root / EPISODES_PATH).to_pylist()
        self.episodes = episodes[:self.info["total_episodes"]]
        tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pydict()
        self.tasks = dict(zip(tasks["task"], tasks["task_index"]))
        self.stats = json.loads((self.root / "meta" / "stats.json").read_text())

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def cameras(self) -> list[str]:
        return [k[len(IMAGE_PREFIX):] for k, f in self.info["features"].items()
                if k.startswith(IMAGE_PREFIX) and f["dtype"] in ("video", "image")]

    @property
    def joint_names(self) -> list[str]:
        return list(self.info["features"][STATE_KEY]["names"])

    @property
    def environment_names(self) -> list[str]:
        """Names of the per-frame `observation.environment_state` values ([] if not recorded)."""
        return list(self.info["features"].get(ENV_STATE_KEY, {}).get("names") or [])

    def __len__(self) -> int:
        return len(self.episodes)

    def episode_table(self, index: int) -> dict[str, np.ndarray]:
        """The frame rows of one episode: state, action, timestamp, ... as arrays."""
        ep = self.episodes[index]
        path = self.root / self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                         file_index=ep["data/file_index"])
        table = pq.read_table(path).to_pydict()
        rows = [i for i, e in enumerate(table["episode_index"]) if e == ep["episode_index"]]
        out = {}
        for key, values in table.items():
            picked = [values[i] for i in rows]
            out[key] = np.asarray(picked, np.float32 if key in (STATE_KEY, ACTION_KEY, ENV_STATE_KEY)
                                  else None)
        return out

    def task(self, index: int) -> str:
        return self.episodes[index]["tasks"][0]

    def success(self, index: int) -> bool:
        return bool(self.episodes[index].get("success", True))

    def expert_from(self, index: int) -> int:
        """First frame whose action is the expert's (0 but in takeover episodes)."""
        return int(self.episodes[index].get("expert_from") or 0)

    def frames(self, index: int, camera: str) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of one camera for one episode."""
        ep = self.episodes[index]
        key = IMAGE_PREFIX + camera
        path = self.root / self.info["video_path"].format(
            video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
            file_index=ep[f"videos/{key}/file_index"])
        first = int(round(ep[f"videos/{key}/from_timestamp"] * self.fps))
        with imageio.get_reader(path, format="FFMPEG") as reader:
            frames = [f for f in reader]
        return np.stack(frames[first:first + ep["length"]])

