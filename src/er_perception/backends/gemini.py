"""The `gemini` ER backend: Gemini Robotics-ER through the Gemini API (google-genai; no ROS).

Each query sends the frame (JPEG) and a prompt in the style the Gemini Robotics-ER documentation
gives, asking for JSON in the model's own conventions, which are this stack's: points [y, x] and
boxes [ymin, xmin, ymax, xmax] normalised to 0..1000. Boxes and points come back as the model
lists them (it gives no scores: every score is 1); a trajectory is one path of points ordered
from start to end. Gemini-ER has no grasp format, so grasps are derived from the boxes of what the
query names: top-down, closing across the object.

3D, with depth and a camera pose, follows the `sim` backend from a mask instead of ground truth:
the object is what stands in its box above the surface around the box (world z up), and
`mask_position_3d` / `mask_grasp` measure that mask as they measure a segmentation mask. Points
and trajectory waypoints carry the surface point seen at their pixel.

A reply that cannot be read (no JSON, not a list, items without coordinates), an HTTP error, a
timeout or an unreachable server is not an exception: the answer is empty and its message, which
starts with "gemini:", says why. 5xx replies and timeouts are retried `retries` times.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import import_module

import numpy as np
from google.genai import Client, errors, types
from PIL import Image

from er_perception.backends.base import (Answer, Box, CameraFrame, ErBackend, Grasp, Point,
                                         Trajectory, limit, normalise_query)
from er_perception.geometry import (ER_SCALE, GeometryError, back_project, from_er, mask_grasp,
                                    mask_position_3d, support_height, to_er)
from er_perception.language import object_phrases, parse_motion

DEFAULT_MODEL = "gemini-robotics-er-1.5-preview"
API_KEY_VARIABLES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")   # google-genai's order of precedence
RETRY_STATUS_CODES = [500, 502, 503, 504]
RETRY_DELAY_S = 0.2
JPEG_QUALITY = 90
# Coordinates this far outside 0..1000 are rounding and are clamped; farther, the item is wrong
# (pixel coordinates, another convention) and is dropped.
CLAMP_TOLERANCE = 50.0
# What stands less than this above the surface around its box is that surface (the table).
MIN_OBJECT_HEIGHT_M = 0.005
SUPPORT_RING_PX = 4
# Points read their depth as the median over this many pixels around them (edges, noise).
POINT_DEPTH_RADIUS_PX = 2

_JSON_FORMAT = ('The answer should follow the json format: [{"point": <point>, "label": '
                '<label1>}, ...]. The points are in [y, x] format normalized to 0-1000.')
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def points_prompt(query: str, max_results: int = 0) -> str:
    most = f" no more than {max_results} items:" if max_results else ""
    return (f"Point to{most} {query}. The label returned should be an identifying name for "
            f"the object detected. {_JSON_FORMAT}")


def boxes_prompt(query: str, max_results: int = 0) -> str:
    return ("Return bounding boxes as a JSON array with labels. Never return masks or code "
            f"fencing. Limit to {max_results or 25} objects. Include only the objects that match: "
            f"{query}. If an object is present multiple times, name them according to their "
            "unique characteristic (colors, size, position, unique characteristics, etc..). The "
            'format should be as follows: [{"box_2d": [ymin, xmin, ymax, xmax], "label": <label '
            "for the object>}] normalized to 0-1000. The values in box_2d must only be integers.")


def trajectory_prompt(query: str, n_points: int) -> str:
    """Ask for `n_points` points, start and end included, labelled by their order."""
    parts = parse_motion(query)
    start = parts[0] if parts else "the object to move"
    return (f"Place a point on {start}, then {n_points - 1} points for the trajectory of this "
            f"motion: {query}. The points should be labeled by order of the trajectory, from "
            f"'0' (start point) to '{n_points - 1}' (final point). {_JSON_FORMAT}")


def motion_label(query: str) -> str:
    """ "move the red cube into the bowl" -> "red cube -> bowl" (as the sim backend labels
    paths); the query itself when it does not read as a motion."""
    parts = parse_motion(query)
    if parts is None:
        return query
    return " -> ".join(" and ".join(object_phrases(p)) or p for p in parts)


class AnswerFormatError(ValueError):
    """A reply that is not the JSON list the prompt asked for."""


def parse_answer(text: str, key: str, arity: int) -> tuple[list[tuple[str, tuple]], list[str]]:
    """The (label, coordinates) items of a Gemini-ER JSON reply, in its order, and why any item
    was dropped.

    Accepts a ```json fenced or bare reply, a list or an object holding one list; `key` ("point"
    or "box_2d") holds `arity` numbers in 0..1000 (clamped when slightly outside). Raises
    AnswerFormatError when the reply as a whole is unusable.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        data = json.loads(body)
    except ValueError:
        raise AnswerFormatError(f"the reply is not JSON: {_excerpt(text)}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise AnswerFormatError(f"the reply is an object without one list: {_excerpt(text)}")
        data = lists[0]
    if not isinstance(data, list):
        raise AnswerFormatError(f"the reply is not a list: {_excerpt(text)}")
    items, problems = [], []
    for i, item in enumerate(data):
        try:
            items.append(_item(item, key, arity))
        except ValueError as exc:
            problems.append(f"item {i}: {exc}")
    return items, problems


def _item(item, key: str, arity: int) -> tuple[str, tuple]:
    if not isinstance(item, dict) or key not in item:
        raise ValueError(f"no {key!r} in {_excerpt(json.dumps(item))}")
    coords = item[key]
    if not (isinstance(coords, list) and len(coords) == arity
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords)):
        raise ValueError(f"{key!r} must be {arity} numbers, got {_excerpt(json.dumps(coords))}")
    if not all(-CLAMP_TOLERANCE <= c <= ER_SCALE + CLAMP_TOLERANCE for c in coords):
        raise ValueError(f"{key!r} {coords} is not within 0..1000")     # NaN fails this too
    coords = tuple(min(max(float(c), 0.0), ER_SCALE) for c in coords)
    if arity == 4 and not (coords[0] < coords[2] and coords[1] < coords[3]):
        raise ValueError(f"{key!r} {list(coords)} is not [ymin, xmin, ymax, xmax] with min < max")
    label = item.get("label", "")
    return (label if isinstance(label, str) else json.dumps(label)), coords


def _name(value) -> str:
    """An API enum's name as the REST API spells it ("SAFETY")."""
    return str(getattr(value, "value", value))


def _excerpt(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")


def _http_errors(name: str) -> tuple[type[Exception], ...]:
    """An exception class of the HTTP library google-genai sends with: httpx2, or httpx where
    that is installed."""
    found = []
    for library in ("httpx2", "httpx"):
        try:
            found.append(getattr(import_module(library), name))
        except ImportError:
            pass
    return tuple(found)


TIMEOUT_ERRORS = _http_errors("TimeoutException")
REQUEST_ERRORS = _http_errors("RequestError")    # refused connections, broken transfers, ...


@dataclass
class _Found:
    """One box the model returned, and the 3D measure of what stands in it."""

    label: str
    box_2d: tuple[float, float, float, float]
    mask: np.ndarray | None = None               # the object's pixels; None without 3D
    centre: np.ndarray | None = None
    size: np.ndarray | None = None


class GeminiApi:
    """A google-genai client for one model: the key from the environment (GOOGLE_API_KEY or
    GEMINI_API_KEY, the first wins as in google-genai), a base URL override (a local server that
    speaks the same REST API), per-request timeouts and retries of 5xx replies and timeouts.
    Shared by the ER backend and the planner (agent.llm); `who` and `where` word its errors."""

    def __init__(self, model: str, base_url: str = "", api_version: str = "v1beta",
                 timeout_s: float = 10.0, retries: int = 1, who: str = "gemini",
                 where: str = "the node"):
        api_key = next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), None)
        if api_key is None:
            raise ValueError(f"{who}: no API key; set {' or '.join(API_KEY_VARIABLES)} "
                             f"in {where}'s environment")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                and timeout_s > 0):
            raise ValueError(f"{who}: timeout_s must be > 0, got {timeout_s!r}")
        if int(retries) != retries or retries < 0:
            raise ValueError(f"{who}: retries must be an integer >= 0, got {retries!r}")
        if not model:
            raise ValueError(f"{who}: model must name a model")
        self.model, self.timeout_s, self.retries = str(model), float(timeout_s), int(retries)
        self.where = base_url or "the Gemini API"
        retry = types.HttpRetryOptions(attempts=self.retries + 1, initial_delay=RETRY_DELAY_S,
                                       jitter=0.0, http_status_codes=RETRY_STATUS_CODES)
        self.client = Client(api_key=api_key, vertexai=False, http_options=types.HttpOptions(
            base_url=base_url or None, api_version=api_version,
            timeout=round(self.timeout_s * 1000), retry_options=retry))   # timeout: ms

    def generate(self, contents: list, config: types.GenerateContentConfig
                 ) -> tuple[str | None, str]:
        """The reply's text and "", or None and why there is none ("gemini: ...")."""
        attempts = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
        try:
            response = self.client.models.generate_content(model=self.model, contents=contents,
                                                           config=config)
        except errors.APIError as exc:
            status = f" {exc.status}" if exc.status else ""
            return None, f"gemini: HTTP {exc.code}{status}: {exc.message} ({attempts})"
        except errors.UnknownApiResponseError as exc:
            return None, f"gemini: unreadable response: {exc}"
        except TIMEOUT_ERRORS:
            return None, f"gemini: no answer within {self.timeout_s:g} s ({attempts})"
        except REQUEST_ERRORS as exc:
            return None, f"gemini: cannot reach {self.where}: {exc} ({attempts})"
        text = response.text
        if not text:
            feedback, candidates = response.prompt_feedback, response.candidates
            finish = candidates[0].finish_reason if candidates else None
            why = (f"blocked: {_name(feedback.block_reason)}" if feedback and feedback.block_reason
                   else f"finish reason {_name(finish)}")
            return None, f"gemini: the reply has no text ({why})"
        return text, ""


class GeminiBackend(ErBackend):
    """Embodied reasoning by Gemini Robotics-ER over the Gemini API.

    The API key comes from the environment, GOOGLE_API_KEY or GEMINI_API_KEY (the first wins when
    both are set, as in google-genai), never from a parameter.

    Args (the ER node's `gemini.<option>` parameters):
      model: the model id.
      base_url: the API's address ("": Google's); another server speaking the same REST API.
      api_version: the REST API version in the path; v1beta serves the preview ER models.
      timeout_s: each request's limit; a query takes at most (retries + 1) times this. The
        backbone waits `er_timeout_s` (5 s) for an ER answer: raise that to match.
      retries: attempts after the first for 5xx replies, timeouts and refused connections.
      temperature: sampling temperature (0.5 in the ER documentation's examples).
      thinking_budget: thinking tokens; 0 (no thinking) answers spatial queries fastest, as the
        ER documentation recommends; -1 lets the model decide.
      trajectory_points: points asked for per trajectory, start and end included.
    """

    name = "gemini"

    def __init__(self, model: str = DEFAULT_MODEL, base_url: str = "", api_version: str = "v1beta",
                 timeout_s: float = 10.0, retries: int = 1, temperature: float = 0.5,
                 thinking_budget: int = 0, trajectory_points: int = 10):
        if not 0 <= temperature <= 2:
            raise ValueError(f"gemini backend: temperature must be in 0..2, got {temperature!r}")
        if int(thinking_budget) != thinking_budget or thinking_budget < -1:
            raise ValueError("gemini backend: thinking_budget must be an integer >= -1, got "
                             f"{thinking_budget!r}")
        if trajectory_points < 2:
            raise ValueError("gemini backend: trajectory_points must be >= 2")
        self.api = GeminiApi(model, base_url, api_version, timeout_s, retries, "gemini backend",
                             "the ER node")
        self.model, self.timeout_s = self.api.model, self.api.timeout_s
        self.retries = self.api.retries
        self.trajectory_points = int(trajectory_points)
        self._config = types.GenerateContentConfig(
            temperature=float(temperature),
            thinking_config=types.ThinkingConfig(thinking_budget=int(thinking_budget)))

    # -- the API ---------------------------------------------------------------------------------
    @staticmethod
    def _image(rgb: np.ndarray) -> types.Part:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return types.Part.from_bytes(data=buffer.getvalue(), mime_type="image/jpeg")

    def answer_question(self, parts: list) -> tuple[str | None, str]:
        """A free-form answer to text and RGB images in order (ERQA questions,
        `er_perception.erqa`): the reply's text and "", or None and why there is none."""
        return self.api.generate([self._image(p) if isinstance(p, np.ndarray) else str(p)
                                  for p in parts], self._config)

    def _ask(self, frame: CameraFrame, prompt: str, key: str,
             arity: int) -> tuple[list[tuple[str, tuple]], str]:
        """The model's items for the prompt on the frame, and a message: why there are none, or
        which were dropped."""
        text, why = self.api.generate([self._image(frame.rgb), prompt], self._config)
        if text is None:
            return [], why
        try:
            items, problems = parse_answer(text, key, arity)
        except AnswerFormatError as exc:
            return [], f"gemini: {exc}"
        if problems:
            return items, (f"gemini: dropped {len(problems)} of {len(problems) + len(items)} "
                           f"items: {'; '.join(problems)}")
        return items, "" if items else f"gemini: found nothing in {frame.camera}"

    # -- 3D --------------------------------------------------------------------------------------
    @staticmethod
    def _measure(frame: CameraFrame, found: _Found) -> _Found:
        """Fill the object's mask and 3D extent: the box's pixels that stand above the surface
        around the box (all of the box's pixels when nothing does, a flat object)."""
        if not frame.has_3d:
            return found
        v0, u0 = from_er(found.box_2d[0], found.box_2d[1], frame.width, frame.height)
        v1, u1 = from_er(found.box_2d[2], found.box_2d[3], frame.width, frame.height)
        box = np.zeros((frame.height, frame.width), bool)
        box[max(0, math.ceil(v0)):math.floor(v1) + 1, max(0, math.ceil(u0)):math.floor(u1) + 1] = 1
        v, u = np.nonzero(box)
        z = frame.depth[v, u].astype(float)
        valid = np.isfinite(z) & (z > 0)
        if not np.any(valid):
            return found
        heights = np.full(z.shape, -np.inf)
        heights[valid] = back_project(u[valid], v[valid], z[valid], frame.K, frame.pose)[:, 2]
        surface = support_height(box, frame.depth, frame.K, frame.pose, float(heights.max()),
                                 SUPPORT_RING_PX)
        above = heights > (-np.inf if surface is None else surface + MIN_OBJECT_HEIGHT_M)
        mask = np.zeros_like(box)
        mask[v[above], u[above]] = True
        if not mask.any():
            mask[v[valid], u[valid]] = True
        try:
            found.centre, found.size = mask_position_3d(mask, frame.depth, frame.K, frame.pose)
        except GeometryError:
            return found
        found.mask = mask
        return found

    @staticmethod
    def _surface_point(frame: CameraFrame, y: float, x: float) -> np.ndarray | None:
        """The world point seen at ER (y, x): the median depth around that pixel."""
        if not frame.has_3d:
            return None
        v, u = from_er(y, x, frame.width, frame.height)
        r, c, k = round(v), round(u), POINT_DEPTH_RADIUS_PX
        z = frame.depth[max(0, r - k):r + k + 1, max(0, c - k):c + k + 1].astype(float)
        z = z[np.isfinite(z) & (z > 0)]
        return back_project(u, v, np.median(z), frame.K, frame.pose)[0] if z.size else None

    # -- queries ---------------------------------------------------------------------------------
    @staticmethod
    def _checked(query: str, max_results: int) -> str:
        """The normalised query; ErInputError for a bad query or max_results, before a request."""
        limit([], max_results)
        return normalise_query(query)

    def _boxes(self, frame: CameraFrame, query: str, max_results: int) -> Answer[_Found]:
        query = self._checked(query, max_results)
        items, message = self._ask(frame, boxes_prompt(query, max_results), "box_2d", 4)
        return Answer([self._measure(frame, _Found(label or query, coords))
                       for label, coords in limit(items, max_results)], message)

    def detect(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Box]:
        found = self._boxes(frame, query, max_results)
        return Answer([Box(f.label, f.box_2d, 1.0, f.centre, f.size) for f in found],
                      found.message)

    def point(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Point]:
        query = self._checked(query, max_results)
        items, message = self._ask(frame, points_prompt(query, max_results), "point", 2)
        return Answer([Point(label or query, y, x, 1.0, self._surface_point(frame, y, x))
                       for label, (y, x) in limit(items, max_results)], message)

    def grasp(self, frame: CameraFrame, query: str, max_results: int = 0) -> Answer[Grasp]:
        """Top-down grasps of the boxes of what the query names. With depth: as the sim backend
        grasps a segmentation mask, at the centroid of the object's pixels, across their narrow
        direction, as wide as they are along it. Without: at the box centre, across its short
        side, as wide as that side."""
        found = self._boxes(frame, query, max_results)
        grasps = []
        for f in found:
            if f.mask is not None:
                g = mask_grasp(f.mask)
                y, x = to_er(g.v, g.u, frame.width, frame.height)
                angle, width = g.angle, g.width * ER_SCALE / frame.width
            else:
                ymin, xmin, ymax, xmax = f.box_2d
                y, x = (ymin + ymax) / 2, (xmin + xmax) / 2
                w_px = (xmax - xmin) * frame.width / ER_SCALE
                h_px = (ymax - ymin) * frame.height / ER_SCALE
                angle, width = (0.0, w_px) if w_px <= h_px else (math.pi / 2, h_px)
                width *= ER_SCALE / frame.width
            grasps.append(Grasp(f.label, y, x, angle, width, 1.0, f.centre))
        return Answer(grasps, found.message)

    def trajectory(self, frame: CameraFrame, query: str,
                   max_results: int = 0) -> Answer[Trajectory]:
        """One path: the model's points ordered by their labels ("0" = start) when all are
        numbers, else as listed; waypoints carry the surface point seen at their pixel."""
        query = self._checked(query, max_results)
        items, message = self._ask(frame, trajectory_prompt(query, self.trajectory_points),
                                   "point", 2)
        if all(label.strip().isdigit() for label, _ in items):
            items = sorted(items, key=lambda item: int(item[0]))
        if len(items) < 2:
            return Answer(message=message or f"gemini: a path needs 2 points, got {len(items)}")
        label = motion_label(query)
        path = [Point(label, y, x, 1.0, self._surface_point(frame, y, x)) for _, (y, x) in items]
        return Answer([Trajectory(label, path)], message)
