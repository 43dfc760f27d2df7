"""The language-model planners: reading replies (well-formed and malformed), the transformers
planner's load-and-generate path on a tiny causal LM this test trains to answer one plan, and the
gemini planner against the local Gemini REST replay server of the ER backend's tests."""
import json

import pytest

from agent.llm import (GeminiPlanner, TransformersPlanner, build_prompt, make_planner,
                       parse_reply, safety_prompt_ids)
from agent.plan import PlanError
from agent.safety import calibrate_threshold, rule_screen, screen
from gemini_replay import KEY, ReplayServer, api_key, error, text_reply  # noqa: F401 (fixture)

PLAN = {"safe": True, "reason": "", "steps": ["put the red cube in the bowl",
                                              "hand the blue cube over to the right arm"]}


@pytest.mark.parametrize("text", [
    json.dumps(PLAN),
    "```json\n" + json.dumps(PLAN) + "\n```",
    "Sure! Here is the plan: " + json.dumps(PLAN) + " Let me know.",
    json.dumps(PLAN["steps"]),
    json.dumps({"steps": [{"instruction": s} for s in PLAN["steps"]]}),
])
def test_replies_are_read_robustly(text):
    reply = parse_reply(text)
    assert reply.safe and reply.steps == tuple(PLAN["steps"])


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("put the red cube in the bowl", "holds no JSON"),
    ('{"steps": ["put the red cube in the bowl"', "holds no JSON"),
    ('"just a string"', "holds no JSON"),
    ('{"safe": 3, "steps": []}', "'safe' is not true/false"),
    ('{"safe": true, "steps": "x", "program": 5}', "'program' is not text"),
    ('{"safe": true, "steps": [1, 2]}', "not a list of instructions"),
    ('{"safe": true}', "neither steps nor a program"),
])
def test_malformed_replies_fail_with_what_came_back(text, why):
    with pytest.raises(PlanError, match=why):
        parse_reply(text)


def test_a_refusal_needs_no_steps():
    reply = parse_reply('{"safe": "false", "reason": "boiling water in a bin", "steps": []}')
    assert not reply.safe and reply.reason == "boiling water in a bin"


# --- transformers -----------------------------------------------------------------------------

ANSWER = json.dumps({"safe": True, "steps": ["put the red cube in the bowl"]})
INSTRUCTION = "red cube into the bowl please"
# The scored safety judgment: the tiny model learns the label after the safety prompt for these
# two; the unsafe one is a hazard the rules miss, so only the model's judgment can refuse it.
SAFETY_TRAINING = {INSTRUCTION: "safe", "pour the weed killer into the lemonade": "unsafe"}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama with a byte-level BPE tokenizer, trained until it answers ANSWER to the
    planner prompt of INSTRUCTION (greedy) and the label of SAFETY_TRAINING after the safety
    prompt, saved with save_pretrained like any checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    torch.manual_seed(0)
    torch.set_num_threads(1)
    prompt = build_prompt(INSTRUCTION)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([prompt, ANSWER], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", unk_token="<unk>")
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    pairs = [(tok(prompt)["input_ids"], tok(ANSWER)["input_ids"] + [tok.eos_token_id])] + [
        (sum(safety_prompt_ids(tok, text), []), tok(" " + label)["input_ids"])
        for text, label in SAFETY_TRAINING.items()]
    batch = [(torch.tensor([p_ids + a_ids]), torch.tensor([[-100] * len(p_ids) + a_ids]))
             for p_ids, a_ids in pairs]
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in batch)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if loss.item() < 0.03:
            break
    path = tmp_path_factory.mktemp("tiny_planner_lm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_transformers_planner_loads_a_local_checkpoint_and_plans_from_its_answer(tiny_lm):
    planner = make_planner("transformers", model_path=str(tiny_lm), max_new_tokens=40)
    plan = planner.plan(INSTRUCTION)
    assert [s.instruction for s in plan.steps] == ["put the red cube in the bowl"]
    assert plan.planner == "transformers"
    assert planner.judge(INSTRUCTION) == (False, "")


def test_transformers_planner_output_that_is_no_plan_fails_clearly(tiny_lm):
    planner = TransformersPlanner(str(tiny_lm), max_new_tokens=3)   # cut short: no JSON yet
    with pytest.raises(PlanError, match="no JSON"):
        planner.plan(INSTRUCTION)
    # The safety judgment is scored, not read from the reply: it still has an opinion.
    assert planner.judge(INSTRUCTION) == (False, "")
    assert not screen(INSTRUCTION, planner.judge, planner.name).refused


def test_transformers_safety_score_threshold_calibration_and_screen(tiny_lm):
    planner = TransformersPlanner(str(tiny_lm))
    scores = {text: planner.safety_score(text) for text in SAFETY_TRAINING}
    safe, unsafe = (scores[t] for t in SAFETY_TRAINING)
    assert safe < 0 < unsafe            # the learned label is the likelier one, by its log-prob
    # The cached few-shot head gives the score one full pass over prompt + label gives.
    import torch
    tok, model = planner._tokenizer, planner._model
    for text, score in scores.items():
        context = sum(safety_prompt_ids(tok, text), [])
        logp = []
        for label in ("safe", "unsafe"):
            label_ids = tok(" " + label)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([context + label_ids])).logits[0]
            pred = torch.log_softmax(logits[len(context) - 1:-1], dim=-1)
            logp.append(float(pred.gather(1, torch.tensor(label_ids)[:, None]).sum()))
        assert score == pytest.approx(logp[1] - logp[0], abs=1e-4)
    # Calibrated on these two, the threshold is the safe score: the unsafe one lies above it.
    cal = calibrate_threshold([safe], [unsafe])
    assert cal.threshold == safe and cal.recall == 1.0 and cal.false_refusal_rate == 0.0
    planner.judge_threshold = cal.threshold
    hazard = "pour the weed killer into the lemonade"
    assert not rule_screen(hazard).refused                    # the rules miss it...
    verdict = screen(hazard, planner.judge, planner.name)     # ...the model's judgment does not
    assert verdict.refused and verdict.decided_by == "transformers" and "score" in verdict.reason
    assert not screen(INSTRUCTION, planner.judge, planner.name).refused
    # A threshold above every score never fires (the rules alone decide).
    never = make_planner("transformers", model_path=str(tiny_lm), judge_threshold=unsafe + 1)
    assert never.judge(hazard) == (False, "")
    assert not screen(hazard, never.judge, never.name).refused


def test_transformers_planner_ignores_a_generated_refusal(tiny_lm, monkeypatch):
    """The generated reply's "safe": false is no judgment any more: only a reply without steps."""
    planner = TransformersPlanner(str(tiny_lm))
    monkeypatch.setattr(planner, "ask", lambda prompt: '{"safe": false, "reason": "x", '
                                                       '"steps": ["put the red cube in the bowl"]}')
    assert [s.instruction for s in planner.plan(INSTRUCTION).steps] == [
        "put the red cube in the bowl"]
    monkeypatch.setattr(planner, "ask", lambda prompt: '{"safe": false, "steps": []}')
    planner._last = None
    with pytest.raises(PlanError, match="no steps"):
        planner.plan(INSTRUCTION)


def test_transformers_planner_checks_its_options(tmp_path):
    with pytest.raises(ValueError, match="not a model directory"):
        TransformersPlanner(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no model.gguf"):
        TransformersPlanner(str(tmp_path), gguf_file="model.gguf")
    with pytest.raises(ValueError, match="max_new_tokens"):
        TransformersPlanner(str(tmp_path), max_new_tokens=0)
    with pytest.raises(ValueError, match="judge_threshold"):
        TransformersPlanner(str(tmp_path), judge_threshold="high")
    assert TransformersPlanner(str(tmp_path)).judge("pick up the red cube") is None  # no model
    with pytest.raises(PlanError, match="cannot load"):
        TransformersPlanner(str(tmp_path)).plan("pick up the red cube")
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("oracle")


# --- gemini -----------------------------------------------------------------------------------

def gemini(server, **options):
    return GeminiPlanner(base_url=server.url, **options)


def test_gemini_planner_request_and_plan(api_key):
    with ReplayServer(text_reply(json.dumps(PLAN))) as server:
        planner = gemini(server, model="gemini-test")
        plan = planner.plan("put the red cube in the bowl, then the blue one to the right arm")
    (request,) = server.requests
    assert request["path"] == "/v1beta/models/gemini-test:generateContent"
    assert request["headers"]["x-goog-api-key"] == KEY
    body = request["body"]
    assert "then the blue one to the right arm" in body["contents"][0]["parts"][0]["text"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert [s.instruction for s in plan.steps] == PLAN["steps"] and plan.planner == "gemini"


def test_gemini_planner_refusal_and_program(api_key):
    refusal = {"safe": False, "reason": "boiling water in a bin can start a fire", "steps": []}
    program = {"safe": True, "program": "place('red cube', 'bowl')\nhandover('blue cube')"}
    with ReplayServer(text_reply(json.dumps(refusal)), text_reply(json.dumps(program))) as server:
        planner = gemini(server)
        verdict = screen("tidy the hot water away", planner.judge, planner.name)
        assert verdict.refused and verdict.decided_by == "gemini"
        assert "start a fire" in verdict.reason
        with pytest.raises(PlanError, match="no perception"):
            planner.plan("cube in bowl, blue one over")
        plan = planner.plan("cube in bowl, blue one over", locate=lambda label: [0, 0.5, 0])
    assert len(server.requests) == 2      # the plan reused the judged reply, then asked anew
    assert [s.instruction for s in plan.steps] == ["put the red cube in the bowl",
                                                   "hand the blue cube over to the right arm"]


@pytest.mark.parametrize("replies,why", [
    ([text_reply("I would rather not.")], "holds no JSON"),
    ([text_reply(json.dumps({"safe": True, "steps": ["juggle the cubes"]}))],
     "not an atomic instruction"),
    ([error(500, "INTERNAL", "boom")] * 2, "gemini planner: HTTP 500"),
    ([error(403, "PERMISSION_DENIED", "bad key")], "HTTP 403"),
    ([text_reply(json.dumps(PLAN), delay_s=3.0)] * 2, "no answer within 0.5 s"),
])
def test_gemini_planner_failures_are_plan_errors_with_the_reason(api_key, replies, why):
    with ReplayServer(*replies) as server:
        with pytest.raises(PlanError, match=why):
            gemini(server, timeout_s=0.5, retries=1).plan("put the red cube in the bowl")


def test_gemini_planner_needs_a_key(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="no API key"):
        GeminiPlanner()
