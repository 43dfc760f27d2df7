"""The ERQA-format evaluator: reading question files, interleaving images, exact-match scoring,
and a backend that answers (gemini, against the local replay server) versus one that cannot."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from er_perception.backends import make_backend
from er_perception.erqa import (ANSWER_INSTRUCTION, ErqaFormatError, NotAQuestionAnswerer,
                                evaluate, is_correct, load_questions)
from gemini_replay import ReplayServer, api_key, text_reply  # noqa: F401 (fixture)


def _write(tmp_path, rows, images=("a.png", "b.png")):
    for i, name in enumerate(images):
        Image.fromarray(np.full((8, 12, 3), 40 * (i + 1), np.uint8)).save(tmp_path / name)
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


QUESTIONS = [
    {"question": "Which cube is left? Choices: A. red B. blue", "answer": "A",
     "images": ["a.png"], "question_type": "Spatial Reasoning"},
    {"question": "Before: then after: Did it move? Choices: A. yes B. no", "answer": "B",
     "images": ["a.png", "b.png"], "visual_indices": [8, 20], "question_type": "State Estimation"},
    {"question": "Which is bigger? A. bowl B. cube", "answer": "A", "images": ["b.png"]},
]


def test_load_and_interleave(tmp_path):
    first, second, third = load_questions(_write(tmp_path, QUESTIONS))
    assert first.images[0].shape == (8, 12, 3) and first.question_type == "Spatial Reasoning"
    assert isinstance(first.parts()[0], np.ndarray)
    assert first.parts()[1] == f"{QUESTIONS[0]['question']} {ANSWER_INSTRUCTION}"
    parts = second.parts()
    assert [type(p).__name__ for p in parts] == ["str", "ndarray", "str", "ndarray", "str"]
    assert parts[0] == "Before: " and parts[2] == "then after: "
    assert parts[1][0, 0, 0] == 40 and parts[3][0, 0, 0] == 80
    assert third.answer == "A"


@pytest.mark.parametrize("reply, right", [("A", True), ("a.", True), (" B ", False),
                                          ("A. red", False), (None, False)])
def test_exact_match(reply, right):
    assert is_correct(reply, "A") is right


@pytest.mark.parametrize("row, why", [
    ({"question": "q", "answer": "A"}, "missing images"),
    ({"question": "q", "answer": "A", "images": []}, "non-empty list"),
    ({"question": "q", "answer": "A", "images": ["a.png"], "visual_indices": [0, 1]},
     "2 visual_indices for 1 images"),
    ({"question": "q", "answer": "A", "images": ["missing.png"]}, "cannot read image"),
])
def test_malformed_files_say_where(tmp_path, row, why):
    with pytest.raises(ErqaFormatError, match=why):
        load_questions(_write(tmp_path, [row]))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ErqaFormatError, match="bad.jsonl:1: not JSON"):
        load_questions(tmp_path / "bad.jsonl")


def test_a_backend_without_answers_says_so(tmp_path):
    questions = load_questions(_write(tmp_path, QUESTIONS))
    with pytest.raises(NotAQuestionAnswerer, match="sim backend cannot answer questions"):
        evaluate(make_backend("sim"), questions)


def test_gemini_answers_and_is_scored(tmp_path, api_key):
    questions = load_questions(_write(tmp_path, QUESTIONS))
    with ReplayServer(text_reply("A"), text_reply("A."), text_reply("A")) as server:
        report = evaluate(make_backend("gemini", base_url=server.url, retries=0), questions)
    assert (report["correct"], report["questions"]) == (2, 3)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["by_type"]["State Estimation"] == {"questions": 1, "accuracy": 0.0}
    assert report["by_type"]["Spatial Reasoning"]["accuracy"] == 1.0
    # The second question went out as text, image, text, image, text.
    parts = server.requests[1]["body"]["contents"][0]["parts"]
    assert [next(iter(p)) for p in parts] == ["text", "inlineData", "text", "inlineData", "text"]
    sent = Image.open(io.BytesIO(base64.urlsafe_b64decode(parts[3]["inlineData"]["data"])))
    assert abs(int(np.asarray(sent)[0, 0, 0]) - 80) < 4
    assert parts[-1]["text"].endswith(ANSWER_INSTRUCTION)


def test_gemini_failure_counts_as_wrong(tmp_path, api_key):
    questions = load_questions(_write(tmp_path, QUESTIONS[:1]))
    with ReplayServer() as server:          # no recorded reply: HTTP 500
        report = evaluate(make_backend("gemini", base_url=server.url, retries=0), questions)
    assert report["accuracy"] == 0.0 and report["replies"][0]["error"].startswith("gemini:")


def test_cli_commands_report_and_refuse(tmp_path, capsys):
    from bimanual_core.cli import main
    path = _write(tmp_path, QUESTIONS[:1])
    assert main(["er-erqa", "--backend", "sim", "--file", str(path)]) == 2
    assert "sim backend cannot answer questions" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main(["er-eval", "--backend", "sim", "--scenes", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "sim" and report["queries"] == 3
    assert report["pointing_accuracy"] == 1.0 and report["box_ap50"] == 1.0
    assert main(["er-train", "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "er-data --out" in capsys.readouterr().err
