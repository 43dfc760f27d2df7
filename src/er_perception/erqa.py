"""ERQA-format evaluation: multiple-choice questions on images, scored by exact match (no ROS).

A question file is JSON lines, one question a line, with ERQA's fields:
  question        the text, choices included ("... Choices: A. left B. right ...")
  answer          the correct letter ("B")
  images          image files, relative to the question file (PNG/JPEG)
  visual_indices  (optional) where each image goes in the text, as character offsets (0: before
                  it); without them every image precedes the text
  question_type   (optional) a category, reported apart
Scoring follows the ERQA harness: a reply is right when, with its full stops removed and its
case and surrounding blanks ignored, it equals the answer letter. A backend answers questions
through `answer_question(parts) -> (text or None, why)` where parts are strings and RGB images in
order; backends without it cannot be scored (`NotAQuestionAnswerer`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# The instruction ERQA's harness appends so that the model answers with the letter alone.
ANSWER_INSTRUCTION = ("Please answer directly with only the letter of the correct option and "
                      "nothing else.")


class NotAQuestionAnswerer(TypeError):
    """The backend has no way to answer free questions."""


class ErqaFormatError(ValueError):
    """A question file that is not in the ERQA format; the message says where."""


@dataclass
class Question:
    question: str
    answer: str
    images: list[np.ndarray]
    visual_indices: list[int] = field(default_factory=list)
    question_type: str = ""

    def parts(self) -> list[str | np.ndarray]:
        """Text and images interleaved as visual_indices place them, then the instruction."""
        if not self.visual_indices:
            return [*self.images, f"{self.question} {ANSWER_INSTRUCTION}"]
        out: list[str | np.ndarray] = []
        start = 0
        for index, image in sorted(zip(self.visual_indices, range(len(self.images))),
                                   key=lambda item: item[0]):
            if self.question[start:index].strip():
                out.append(self.question[start:index])
            out.append(self.images[image])
            start = index
        out.append(f"{self.question[start:]} {ANSWER_INSTRUCTION}")
        return out


def load_questions(path: str | Path) -> list[Question]:
    """Questions of an ERQA-format JSON-lines file; ErqaFormatError on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise ErqaFormatError(f"no question file {path}")
    questions = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ErqaFormatError(f"{where}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise ErqaFormatError(f"{where}: a question is a JSON object")
        missing = [k for k in ("question", "answer", "images") if k not in row]
        if missing:
            raise ErqaFormatError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(row["images"], list) or not row["images"]:
            raise ErqaFormatError(f"{where}: images must be a non-empty list of files")
        indices = row.get("visual_indices") or []
        if indices and len(indices) != len(row["images"]):
            raise ErqaFormatError(f"{where}: {len(indices)} visual_indices for "
                                  f"{len(row['images'])} images")
        images = []
        for name in row["images"]:
            try:
                with Image.open(path.parent / name) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except OSError as exc:
                raise ErqaFormatError(f"{where}: cannot read image {name}: {exc}") from None
        questions.append(Question(str(row["question"]), str(row["answer"]).strip(), images,
                                  [int(i) for i in indices], str(row.get("question_type", ""))))
    if not questions:
        raise ErqaFormatError(f"{path} holds no questions")
    return questions


def is_correct(reply: str | None, answer: str) -> bool:
    """ERQA's exact match: full stops removed, case and surrounding blanks ignored."""
    return reply is not None and reply.replace(".", "").strip().lower() == answer.strip().lower()


def evaluate(backend, questions: list[Question],
             say: Callable[[str], None] = lambda _: None) -> dict:
    """Exact-match accuracy of a backend on the questions, overall and per question type."""
    ask = getattr(backend, "answer_question", None)
    if ask is None:
        raise NotAQuestionAnswerer(
            f"the {getattr(backend, 'name', type(backend).__name__)} backend cannot answer "
            "questions (it grounds object phrases only); ERQA needs one that can, e.g. gemini")
    per_type: dict[str, list[int]] = {}
    rows = []
    for i, q in enumerate(questions):
        reply, why = ask(q.parts())
        right = is_correct(reply, q.answer)
        per_type.setdefault(q.question_type or "all", []).append(int(right))
        rows.append(dict(index=i, answer=q.answer, reply=reply, correct=right,
                         **({"error": why} if reply is None else {})))
        say(f"{i + 1}/{len(questions)}: {reply!r} vs {q.answer!r} ({why or 'ok'})")
    correct = sum(r["correct"] for r in rows)
    return dict(backend=getattr(backend, "name", ""), questions=len(rows), correct=correct,
                accuracy=correct / len(rows),
                by_type={t: dict(questions=len(v), accuracy=sum(v) / len(v))
                         for t, v in per_type.items()},
                replies=rows)
