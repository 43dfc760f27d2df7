"""Semantic safety: screen an instruction before anything moves (no ROS imports).

Two opinions are combined: a local rule set (hazards x dangerous verbs and patterns) and, where
the planner backend has one, the model's own judgment (`planner.judge(instruction)`). Either one
refusing refuses: the cost of a false refusal is a rephrased request, the cost of a missed one is
boiling water in a bin. The rules are written against kinds of harm, not against test sentences:

- heat and fire: hot liquids poured, spilled or thrown anywhere but a vessel meant for them;
  setting things alight; metal or batteries in a microwave; flammables on a hob;
- sharp things: handed blade / point first, thrown, swung or pointed at someone;
- breakables: pushed, knocked, thrown or dropped off the table or onto the floor, or smashed;
- people and animals: hitting, pushing, throwing things at, pinching, poking, spraying them;
- chemicals: bleach, poison, detergent ... into food or drink, or mixed together;
- electricity: liquids onto electronics, metal into sockets or toasters;
- choking: small objects to babies or pets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from bimanual_core.instructions import InstructionError, validate_instruction


@dataclass(frozen=True)
class SafetyVerdict:
    refused: bool
    reason: str            # why it was refused, or "" when it was not
    decided_by: str        # "rules", the planner's name, or "" when nothing objected


def _words(*alternatives: str) -> str:
    return r"(?:" + "|".join(alternatives) + r")"


_HOT = _words(r"boiling", r"scalding", r"hot", r"steaming", r"molten", r"burning", r"searing")
_LIQUID = _words(r"water", r"coffee", r"tea", r"soup", r"oil", r"liquid", r"kettle", r"wax",
                 r"milk", r"broth")
_POUR = _words(r"pour", r"spill", r"splash", r"tip", r"dump", r"empty", r"throw", r"toss", r"fling",
               r"tilt", r"splatter", r"upend", r"tip out", r"knock")
_HOT_VESSEL = _words(r"cup", r"mug", r"teapot", r"pot", r"saucepan", r"pan", r"sink", r"thermos",
                     r"kettle", r"flask", r"bowl", r"jug", r"teacup", r"carafe", r"drain")
_FIRE_VERB = _words(r"set fire", r"set on fire", r"set alight", r"ignite", r"light up",
                    r"burn", r"torch", r"incinerate", r"light")
_FLAMMABLE = _words(r"paper", r"napkin", r"towel", r"cloth", r"curtain", r"tablecloth", r"book",
                    r"box", r"cardboard", r"tissue", r"rag", r"bin", r"trash", r"plastic",
                    r"newspaper", r"sleeve", r"hair", r"sheet", r"blanket", r"bag")
_HEAT_SOURCE = _words(r"stove", r"hob", r"burner", r"flame", r"fire", r"candle", r"toaster",
                      r"heater", r"grill", r"oven", r"hot plate", r"hotplate", r"lighter")
_MICROWAVE_BAD = _words(r"fork", r"spoon", r"knife", r"metal", r"foil", r"aluminium", r"aluminum",
                        r"battery", r"batteries", r"phone", r"can", r"tin", r"egg", r"eggs")
_SHARP = _words(r"knife", r"knives", r"scissors", r"blade", r"razor", r"cleaver", r"needle",
                r"skewer", r"saw", r"box cutter", r"cutter", r"scalpel", r"dagger", r"sword",
                r"shears", r"ice pick", r"screwdriver", r"fork", r"glass shard", r"shard")
_POINT_FIRST = _words(r"blade", r"point", r"tip", r"sharp end", r"sharp side", r"edge",
                      r"pointy end")
_LIVING = _words(r"person", r"people", r"someone", r"somebody", r"anyone", r"human", r"man",
                 r"woman", r"child", r"children", r"kid", r"baby", r"toddler", r"me", r"him",
                 r"her", r"them", r"you", r"user", r"operator", r"cat", r"dog", r"pet", r"animal",
                 r"bird", r"hamster", r"fish", r"face", r"eye", r"eyes", r"head", r"hand",
                 r"fingers", r"arm of the person", r"my", r"his", r"their", r"your", r"neighbour",
                 r"guest", r"colleague", r"visitor", r"worker")
_HARM_VERB = _words(r"hit", r"punch", r"strike", r"slap", r"stab", r"poke", r"jab", r"kick",
                    r"smack", r"whack", r"hurt", r"injure", r"harm", r"attack", r"pinch", r"crush",
                    r"squeeze", r"choke", r"strangle", r"scratch", r"cut", r"slash", r"shove",
                    r"trip", r"spray", r"burn", r"scald", r"bite", r"grab the (?:neck|throat|hair)")
_THROW = _words(r"throw", r"toss", r"fling", r"hurl", r"launch", r"chuck", r"lob", r"flick")
_BREAKABLE = _words(r"glass", r"glasses", r"mug", r"cup", r"plate", r"plates", r"vase", r"bottle",
                    r"jar", r"bowl", r"laptop", r"phone", r"egg", r"eggs", r"wine glass",
                    r"tumbler", r"dish", r"dishes", r"teapot", r"mirror", r"lamp", r"bulb",
                    r"screen", r"monitor", r"tablet", r"camera", r"ceramic", r"porcelain", r"pot",
                    r"figurine", r"ornament", r"carafe", r"jug", r"china", r"everything",
                    r"things", r"objects", r"stuff", r"it", r"them")
_OFF_EDGE = _words(r"off the (?:table|counter|desk|shelf|edge|bench|worktop|tray)",
                   r"over the edge", r"(?:on|onto|to) the (?:floor|ground)", r"on the tiles",
                   r"out of the window", r"down the stairs", r"off (?:the )?(?:it|here)")
_PUSH = _words(r"push", r"shove", r"knock", r"sweep", r"slide", r"nudge", r"bump", r"drop",
               r"let go of", r"release", r"roll", r"tip", r"kick", r"bat", r"swipe", r"flick",
               r"drag", r"pull", r"move", r"put", r"place", r"set", r"throw", r"toss")
_SMASH = _words(r"smash", r"shatter", r"break", r"crack", r"crush", r"destroy", r"wreck",
                r"knock over", r"topple", r"tip over", r"bang", r"slam")
_CHEMICAL = _words(r"bleach", r"poison", r"detergent", r"ammonia", r"acid", r"pesticide",
                   r"insecticide", r"weed ?killer", r"rat poison", r"drain cleaner", r"solvent",
                   r"paint thinner", r"antifreeze", r"cleaning (?:fluid|liquid|spray|product)",
                   r"pills", r"medicine", r"medication", r"lye", r"chlorine", r"gasoline",
                   r"petrol", r"kerosene", r"lighter fluid")
_CONSUMABLE = _words(r"drink", r"food", r"coffee", r"tea", r"juice", r"soup", r"water glass",
                     r"cup", r"mug", r"glass", r"bottle", r"milk", r"meal", r"plate", r"sandwich",
                     r"cereal", r"salad", r"lunch", r"dinner", r"baby bottle", r"smoothie",
                     r"wine", r"fish tank", r"aquarium", r"bowl of the (?:cat|dog)",
                     r"(?:cat|dog|pet)'?s? (?:bowl|food|water)", r"eyes", r"face")
_ELECTRONIC = _words(r"laptop", r"keyboard", r"computer", r"phone", r"outlet", r"socket",
                     r"power strip", r"extension (?:lead|cord)", r"charger", r"plug",
                     r"electronics", r"circuit", r"robot'?s? controller", r"monitor", r"router",
                     r"toaster", r"printer", r"console", r"tablet", r"speaker")
_SOCKET = _words(r"outlet", r"socket", r"power strip", r"toaster", r"plug hole", r"mains")
_METAL = _words(r"fork", r"knife", r"spoon", r"metal", r"key", r"keys", r"paper ?clip", r"nail",
                r"screwdriver", r"wire", r"coin", r"scissors")
_SMALL = _words(r"coin", r"coins", r"battery", r"batteries", r"button", r"marble", r"marbles",
                r"bead", r"beads", r"magnet", r"magnets", r"small parts", r"screw", r"screws",
                r"pill", r"pills", r"lego", r"bolt", r"nut", r"ring")
_VULNERABLE = _words(r"baby", r"toddler", r"infant", r"child", r"kid", r"dog", r"cat", r"puppy",
                     r"kitten", r"pet", r"parrot", r"hamster")
# A clause that only forbids ("don't knock the glass over") asks for nothing dangerous.
_NEGATED = re.compile(r"^(?:please )?(?:don'?t|do not|never|avoid|be careful not to|careful not to|"
                      r"make sure (?:not to|you don'?t))\b")


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    reason: str
    unless: re.Pattern[str] | None = None    # a clause matching this is not what the rule means


def _rule(pattern: str, reason: str, unless: str | None = None) -> _Rule:
    return _Rule(re.compile(pattern), reason, re.compile(unless) if unless else None)


_INTO_VESSEL = rf"\b(?:into|in|to) (?:a |an |the |my |your )?(?:\w+ )?{_HOT_VESSEL}\b"
_HANDLE_FIRST = r"\bhandles?\b"

_RULES: list[_Rule] = [
    _rule(rf"\b{_POUR}\b.*\b{_HOT}\b",
          "moving hot or boiling liquid anywhere but a vessel meant for it risks scalds and fire",
          unless=_INTO_VESSEL),
    _rule(rf"\b{_HOT}\b.*\b{_LIQUID}\b.*\b(?:on|onto|over|at|into|in)\b",
          "hot liquid there could scald someone or start a fire", unless=_INTO_VESSEL),
    _rule(rf"\b{_HOT}\b.*\b{_LIQUID}\b.*\b{_LIVING}\b",
          "hot liquid near a person or animal could scald them"),
    _rule(rf"\b{_FIRE_VERB}\b.*\b{_FLAMMABLE}s?\b|\b{_FIRE_VERB} (?:it|them)\b|"
          rf"\bset (?:the )?\w+(?: \w+)? (?:on fire|alight|ablaze)\b",
          "setting things alight is a fire hazard"),
    _rule(rf"\b{_FLAMMABLE}s?\b.*\b(?:on|onto|over|in|into|near|next to|under|above) "
          rf"(?:the |a )?(?:lit |hot |burning |open )?{_HEAT_SOURCE}\b",
          "a flammable object on or near a heat source is a fire hazard"),
    _rule(rf"\b{_HEAT_SOURCE}\b.*\b(?:to|near|under|against|onto|on) (?:the |a )?{_FLAMMABLE}s?\b",
          "a heat source against something flammable is a fire hazard"),
    _rule(rf"\b{_MICROWAVE_BAD}\b.*\b(?:microwave)\b|\bmicrowave (?:the )?{_MICROWAVE_BAD}\b",
          "metal, batteries, sealed cans or eggs in a microwave can spark, burst or catch fire"),
    _rule(rf"\b{_SHARP}\b.*\b{_POINT_FIRST}[- ]?(?:first|forward|forwards|out|outward|facing|"
          rf"towards?|toward|at)\b|\b{_POINT_FIRST} (?:pointing|facing) (?:at|towards?) ",
          "a sharp object must be handed handle first, never blade or point first"),
    _rule(rf"\b{_THROW}\b.*\b{_SHARP}\b|\b{_SHARP}\b.*\b{_THROW}\b",
          "throwing a sharp object can injure someone"),
    _rule(rf"\b(?:swing|wave|brandish|point|aim|jab|thrust|poke)\b.*\b{_SHARP}\b.*"
          rf"\b(?:at|towards?|near|around)\b|\b(?:swing|wave|brandish|point|aim|jab|thrust)\b.*"
          rf"\b{_SHARP}\b.*\b{_LIVING}\b|\b{_SHARP}\b.*\b(?:at|towards?) (?:the |a |my |his |her )?"
          rf"{_LIVING}\b",
          "a sharp object pointed or swung at someone can injure them", unless=_HANDLE_FIRST),
    _rule(rf"\b{_HARM_VERB}\b.*\b{_LIVING}\b(?!.*\bhandle first\b)|"
          rf"\b{_HARM_VERB} (?:me|him|her|them|"
          rf"someone|somebody|the (?:person|child|baby|cat|dog))\b",
          "the instruction would harm a person or an animal"),
    _rule(rf"\b(?:push|shove|knock|trip|tackle)\b (?:over |down )?(?:the |a |my |his |her )?"
          rf"{_LIVING}\b",
          "pushing or knocking a person or an animal can injure them"),
    _rule(rf"\b{_THROW}\b.*\b(?:at|towards?|to hit)\b.*\b{_LIVING}\b",
          "throwing things at a person or an animal can injure them"),
    _rule(rf"\b(?:push|shove|knock|drop|pour|dump|tip|spill)\b.*\b(?:on|onto|over|at) "
          rf"(?:the |a |my |his |her )?{_LIVING}\b(?!.*\bhand\b)",
          "the instruction would drop or push something onto a person or an animal"),
    _rule(rf"\b{_PUSH}\b.*\b{_BREAKABLE}\b.*\b{_OFF_EDGE}|\b{_PUSH}\b.*\b{_OFF_EDGE}\b.*"
          rf"\b{_BREAKABLE}\b",
          "pushing or dropping a breakable object off the table would break it and scatter shards"),
    _rule(rf"\b{_THROW}\b.*\b{_BREAKABLE}\b|\b{_THROW}\b (?:it|them)\b",
          "throwing a breakable object would break it"),
    _rule(rf"\b{_SMASH}\b.*\b{_BREAKABLE}s?\b|\b{_BREAKABLE}\b.*\b(?:smash|shatter|break)\b",
          "breaking a breakable object scatters sharp fragments"),
    _rule(rf"\b{_CHEMICAL}\b.*\b(?:in|into|on|onto|over|with|to)\b.*\b{_CONSUMABLE}\b|"
          rf"\b{_CONSUMABLE}\b.*\b(?:with|and)\b.*\b{_CHEMICAL}\b|"
          rf"\b(?:feed|give)\b.*\b{_CHEMICAL}\b"
          rf".*\b(?:to )?{_LIVING}\b",
          "chemicals or medicine mixed into food or drink could poison someone"),
    _rule(rf"\bmix\b.*\b{_CHEMICAL}\b.*\b{_CHEMICAL}\b|\b{_CHEMICAL}\b.*\b(?:and|with)\b.*"
          rf"\b{_CHEMICAL}\b.*\bmix",
          "mixing chemicals can release toxic gas"),
    _rule(rf"\b(?:pour|spill|splash|tip|dump|empty|spray)\b.*\b(?:on|onto|over|into|in)\b.*"
          rf"\b{_ELECTRONIC}\b",
          "liquid on electrical equipment can cause shocks or fire"),
    _rule(rf"\b(?:put|stick|insert|push|jam|shove|place)\b.*\b{_METAL}\b.*\b(?:in|into|inside)\b.*"
          rf"\b{_SOCKET}\b",
          "metal in a socket or toaster can electrocute or start a fire"),
    _rule(rf"\b(?:give|hand|pass|feed|offer|put)\b.*\b{_SMALL}\b.*\b(?:to|in|into)\b.*"
          rf"\b{_VULNERABLE}\b|\b(?:give|hand|pass|feed|offer)\b (?:the )?{_VULNERABLE}\b.*"
          rf"\b{_SMALL}\b",
          "small objects can choke a baby or a pet"),
]


_CLAUSES = re.compile(r"\s*(?:;|,|\bthen\b|\band then\b|\bbut\b|\b\d+[.)])\s*")
_OBJECT = re.compile(r"\b(?:the|a|an)\s+([a-z][a-z ]*?)(?=\s+(?:in|into|on|onto|to|from|with|off|"
                     r"over|at|and|blade|point|tip)\b|$)")
_PRONOUN = re.compile(r"\b(?:it|them)\b")


def rule_screen(instruction: str) -> SafetyVerdict:
    """The local rule set alone, clause by clause ('it' read as the last object named)."""
    text = validate_instruction(instruction)
    last_object = None
    for clause in filter(None, _CLAUSES.split(text)):
        if last_object:
            clause = _PRONOUN.sub(f"the {last_object}", clause)
        found = _OBJECT.search(clause)
        last_object = found.group(1) if found else last_object
        if _NEGATED.search(clause):
            continue
        for rule in _RULES:
            if rule.pattern.search(clause) and not (rule.unless and rule.unless.search(clause)):
                return SafetyVerdict(True, rule.reason, "rules")
    return SafetyVerdict(False, "", "")


Judge = Callable[[str], "tuple[bool, str] | None"]


def screen(instruction: str, judge: Judge | None = None, judge_name: str = "") -> SafetyVerdict:
    """Screen `instruction` with the rules, then with `judge` (a planner's own judgment: returns
    (refused, reason), or None when it has no opinion). A judge that fails does not refuse on its
    own (the rules still stand); InstructionError for an instruction that is not text."""
    verdict = rule_screen(instruction)
    if verdict.refused or judge is None:
        return verdict
    opinion = judge(instruction)
    if opinion is not None and opinion[0]:
        return SafetyVerdict(True, opinion[1] or "the planner judged it unsafe",
                             judge_name or "planner")
    return verdict


@dataclass(frozen=True)
class Calibration:
    threshold: float          # refuse when a score exceeds it
    false_refusal_rate: float  # on the safe scores it was calibrated on
    recall: float | None       # on the unsafe scores it was calibrated on (None: none given)


def calibrate_threshold(safe_scores, unsafe_scores=(), max_false_refusal: float = 0.0
                        ) -> Calibration:
    """The decision threshold of a scored judge (refuse when score > threshold) with the highest
    recall whose false refusal rate on `safe_scores` is at most `max_false_refusal`: the
    (k+1)-th highest safe score, k = the false refusals allowed; +inf (never fires) when no
    unsafe score lies above that, since refusals there would buy no recall. Calibrate on
    development scores only (for a judge that joins the rules: the instructions the rules let
    through); held-out scores are for measuring it."""
    safe = [float(s) for s in safe_scores]
    unsafe = [float(s) for s in unsafe_scores]
    if not safe:
        raise ValueError("calibrate_threshold: needs at least one safe score")
    if any(s != s for s in safe + unsafe):
        raise ValueError("calibrate_threshold: a score is NaN")
    if not 0.0 <= max_false_refusal < 1.0:
        raise ValueError(f"calibrate_threshold: max_false_refusal must be in [0, 1), got "
                         f"{max_false_refusal!r}")
    allowed = int(max_false_refusal * len(safe) + 1e-9)
    threshold = sorted(safe, reverse=True)[allowed]
    if not any(u > threshold for u in unsafe):
        threshold = float("inf")
    return Calibration(threshold, sum(s > threshold for s in safe) / len(safe),
                       sum(s > threshold for s in unsafe) / len(unsafe) if unsafe else None)


def score_auc(safe_scores, unsafe_scores) -> float:
    """P(an unsafe instruction scores above a safe one), ties half: 0.5 is chance, 1.0 is a
    score that separates the two perfectly."""
    safe, unsafe = list(safe_scores), list(unsafe_scores)
    if not safe or not unsafe:
        raise ValueError("score_auc: needs safe and unsafe scores")
    wins = sum((u > s) + 0.5 * (u == s) for u in unsafe for s in safe)
    return wins / (len(safe) * len(unsafe))


__all__ = ["SafetyVerdict", "rule_screen", "screen", "InstructionError", "Calibration",
           "calibrate_threshold", "score_auc"]
