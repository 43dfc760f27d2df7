"""The `learned` ER backend: the project's own grounding model, trained on simulator renders (no
ROS imports).

`er_perception.learned` grounds each object phrase of a query ("the cube that is red") as the sum
of a colour map (from the image's cell colour histograms) and an object map (from frozen
EfficientNet-Lite0 features), with words embedded by frozen MiniLM; the peak of the map is the
object, the box regressed there its box. Everything
after the boxes is the `hf` backend's (this class reuses it): points at box centres, top-down
grasps across the short side, straight trajectories between two objects, 3D from the depth at
the box centre. It runs offline on a CPU (one frame: ~30 ms of encoder + a few ms per phrase).
"""
from __future__ import annotations

from bimanual_core.config import ConfigError, resolve_checkpoint
from er_perception.backends.base import CameraFrame
from er_perception.backends.hf import HfBackend, _Detection

DEFAULT_MODEL = "er_learned"      # models/er_learned, shipped with the package


class LearnedBackend(HfBackend):
    """ER with the project's trained grounding head.

    Args (the ER node's `learned.<option>` parameters):
      model_path: a directory written by `bimanual-vla er-train`, or the name of one in models/
        (default: er_learned, the shipped model; models/er_learned/TRAINING.md says how it was
        trained and what it scored).
      score_threshold: objects whose score (the product of the probabilities of the phrase's
        colour and object at the peak) is below this are not returned (0..1).
      device: "auto", "cpu" or "cuda[:N]".
      max_detections: at most this many boxes per phrase (best first).
      nms_iou: boxes of one phrase overlapping a better one by more than this IoU are dropped;
        also the overlap above which two boxes are one object (not a trajectory's start and
        target at once).
      trajectory_points: points per trajectory, start and end included.

    The model knows the colours and objects it was trained on (config.json `colours`, `nouns`);
    other words go through their MiniLM embedding and are unreliable. `Box.size_3d` is zeros
    (unknown), as for `hf`.
    """

    name = "learned"

    def __init__(self, model_path: str = DEFAULT_MODEL, score_threshold: float = 0.3,
                 device: str = "cpu", max_detections: int = 10, nms_iou: float = 0.5,
                 trajectory_points: int = 10):
        from er_perception.learned.predict import Grounder
        for option, value in (("score_threshold", score_threshold), ("nms_iou", nms_iou)):
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"learned backend: {option} must be in 0..1, got {value!r}")
        if max_detections < 1 or trajectory_points < 2:
            raise ValueError("learned backend: max_detections >= 1 and trajectory_points >= 2")
        try:
            path = resolve_checkpoint(model_path or DEFAULT_MODEL)
        except ConfigError as exc:
            raise ValueError(f"learned backend: {exc}; train one with `bimanual-vla er-train`") \
                from None
        self.model_type = self.name
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.max_detections, self.trajectory_points = int(max_detections), int(trajectory_points)
        self.device = self._pick_device(device)
        self.model_path = path
        self._grounder = Grounder(path, self.device)

    def _detect(self, frame: CameraFrame, phrases: list[str]) -> list[_Detection]:
        maps = self._grounder.maps(frame.rgb)
        found = []
        for phrase in phrases:
            try:
                objects = self._grounder.find(maps, phrase, self.max_detections,
                                              self.score_threshold, self.nms_iou)
            except ValueError:           # names no colour or object: nothing to look for
                continue
            found += [_Detection(phrase, o.score, o.box.astype(float),
                                 self._position_3d(frame, o.box)) for o in objects]
        return sorted(found, key=lambda d: -d.score)

    def _nothing(self, frame: CameraFrame, phrases: list[str]) -> str:
        known = self._grounder.config
        return (f"learned: found no {' or '.join(map(repr, phrases))} above the score threshold "
                f"{self.score_threshold:g} in {frame.camera} (trained colours: "
                f"{', '.join(known.colours)}; objects: {', '.join(known.nouns)})")
