"""Reading ER queries against a known vocabulary of object labels (no ROS imports).

Backends with a closed vocabulary (the simulator's ground-truth labels, a detector's classes) use
this to decide which labels a free-text query means: an exact label phrase first ("where to grasp
the red cube" -> "red cube"), then word overlap with plural and synonym folding ("red block" ->
"red cube", "cubes" -> every cube) where a named colour must not contradict the label's.
"""
from __future__ import annotations

import re
from typing import Sequence

COLOUR_WORDS = frozenset({"red", "green", "blue", "yellow", "purple", "orange", "black", "white",
                          "pink", "brown", "grey", "gray", "cyan", "magenta", "violet"})
# Words that say what to do, not what to look at.
_STOP_WORDS = frozenset("""
a an the this that these those it its of at in on to is are be there here please can could would
you me i we should where what which how find detect locate show point points pointing to grasp
grip grab pick up hold all every each any object objects thing things item items position
location place spot best good image scene picture
""".split())
# Interchangeable nouns: a query word is folded onto the one the vocabulary uses.
_SYNONYMS = [frozenset(g) for g in ({"cube", "block", "box", "brick"}, {"bowl", "dish", "basin"},
                                    {"cup", "mug"}, {"bin", "basket", "container", "tray"})]

_ENUMERATION = re.compile(r"\s*(?:,|;|&|\band\b|\bor\b)\s*")
_MOTION = [
    re.compile(r"^(?:move|put|place|bring|carry|take|drop|push|slide|transfer|stack|set)\s+"
               r"(?P<src>.+?)\s+(?:into|inside|in|onto|on top of|on|to|towards|toward|next to|"
               r"beside|near|over to)\s+(?P<dst>.+)$"),
    re.compile(r"^(?:from\s+)?(?P<src>.+?)\s+(?:to|into|onto)\s+(?P<dst>.+)$"),
]


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _canonical(word: str, vocabulary: set[str]) -> str:
    """Fold plurals and synonyms onto a vocabulary word when the word itself is not one."""
    if word in vocabulary:
        return word
    for candidate in (word[:-2] if word.endswith("es") else None,
                      word[:-1] if word.endswith("s") else None):
        if candidate and candidate in vocabulary:
            return candidate
    singular = word[:-1] if word.endswith("s") else word
    for group in _SYNONYMS:
        if word in group or singular in group:
            for other in group & vocabulary:
                return other
    return word


def _phrase_spans(query: list[str], label: list[str]) -> list[tuple[int, int]]:
    n = len(label)
    return [(i, i + n) for i in range(len(query) - n + 1) if query[i:i + n] == label]


def object_phrases(query: str) -> list[str]:
    """The object phrases a query names, for an open-vocabulary detector: each part of an
    enumeration without the words around it that say what to do ("where to grasp the red cube"
    -> ["red cube"], "the cubes and the bowl" -> ["cubes", "bowl"])."""
    phrases = []
    for part in _ENUMERATION.split(query.lower()):
        words = tokens(part)
        while words and words[0] in _STOP_WORDS:
            words.pop(0)
        while words and words[-1] in _STOP_WORDS:
            words.pop()
        phrase = " ".join(words)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def match_labels(query: str, labels: Sequence[str]) -> list[tuple[str, float]]:
    """Labels the query refers to, with a score in (0, 1], best first; [] when none fits.

    Each part of an enumeration ("the cubes and the bowl") is matched on its own. Labels written
    out in a part win (score 1), longest first, so that "red cube" is preferred over "cube" in
    "the red cube"; otherwise the labels sharing the most words with the part, with the label's
    noun (its last word) required and no colour contradicted.
    """
    unique = list(dict.fromkeys(labels))
    found: dict[str, float] = {}
    for part in _ENUMERATION.split(query.lower()):
        for label, score in _match_part(tokens(part), unique):
            found[label] = max(score, found.get(label, 0.0))
    return sorted(found.items(), key=lambda item: (-item[1], unique.index(item[0])))


def _match_part(q: list[str], unique: list[str]) -> list[tuple[str, float]]:
    spans = sorted(((span, label) for label in unique for span in _phrase_spans(q, tokens(label))),
                   key=lambda item: item[0][0] - item[0][1])          # longest span first
    taken: list[tuple[int, int]] = []
    named: list[str] = []
    for (start, end), label in spans:
        if all(end <= s or start >= e for s, e in taken):
            taken.append((start, end))
            if label not in named:
                named.append(label)
    if named:
        return [(label, 1.0) for label in named]

    vocabulary = {w for label in unique for w in tokens(label)}
    content = {_canonical(w, vocabulary) for w in q if w not in _STOP_WORDS}
    colours = content & COLOUR_WORDS
    scored = []
    for label in unique:
        words = set(tokens(label))
        if not words or tokens(label)[-1] not in content:
            continue
        if colours and (words & COLOUR_WORDS) and not colours <= words:
            continue
        scored.append((label, len(content & words) / len(content | words)))
    if not scored:
        return []
    best = max(score for _, score in scored)
    return [item for item in scored if item[1] == best]


def parse_motion(query: str) -> tuple[str, str] | None:
    """Split "move the red cube into the bowl" into ("the red cube", "the bowl"); None if the
    query does not name both an object and a target."""
    text = " ".join(tokens(query))
    for pattern in _MOTION:
        m = pattern.match(text)
        if m:
            return m.group("src").strip(), m.group("dst").strip()
    return None


def phrase_attributes(phrase: str, nouns: Sequence[str] = ()) -> tuple[list[str], str]:
    """The colour words of an object phrase and its noun, for models that ground colour and
    object apart ("the cube that is red" -> (["red"], "cube")).

    The noun is the first content word that folds (plural, synonym) onto one of `nouns` ("blocks"
    -> "cube"); without one, the phrase's last content word as written; "" when the phrase names
    only colours ("the red one")."""
    vocabulary = set(nouns)
    words = [w for w in tokens(phrase) if w not in _STOP_WORDS and w != "one"]
    colours = [w for w in words if w in COLOUR_WORDS]
    content = [w for w in words if w not in COLOUR_WORDS]
    for word in content:
        canonical = _canonical(word, vocabulary)
        if canonical in vocabulary:
            return colours, canonical
    return colours, content[-1] if content else ""
