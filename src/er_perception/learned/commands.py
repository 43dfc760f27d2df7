"""`bimanual-vla er-data | er-train | er-eval | er-erqa`: the learned ER backend's commands.

    bimanual-vla er-data --out data/er/train --scenes 2000      render training scenes
    bimanual-vla er-train --data data/er/train --out runs/er    train the grounding head (CPU)
    bimanual-vla er-eval --backend learned --scenes 200         pointing accuracy and box AP50
                                                                on held-out simulator scenes
    bimanual-vla er-erqa --backend gemini --file q.jsonl        ERQA-format multiple choice

Heavy imports (torch, MuJoCo) happen inside the commands, so `bimanual-vla --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def _options(items: list[str]) -> dict:
    """`key=value` backend options with YAML-typed values (as the node's parameters)."""
    import yaml
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _backend(args):
    from er_perception.backends import make_backend
    try:
        return make_backend(args.backend, **_options(args.option))
    except TypeError as exc:               # an option the backend does not take
        raise ValueError(f"backend {args.backend!r}: {exc}") from None


def _write(report: dict, out: str | None, what: str) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"[{what}] wrote {out}")


def _run(what: str, body) -> int:
    try:
        return body()
    except (ValueError, OSError) as exc:
        print(f"[{what}] {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_er_data(args) -> int:
    from er_perception.learned import TEST_SEED_OFFSET
    from er_perception.learned.dataset import generate

    def body():
        seed = args.seed if args.seed is not None else (
            0 if args.split == "train" else TEST_SEED_OFFSET)
        out = generate(args.out, args.scenes, args.split, seed, args.camera,
                       say=lambda m: print(f"[er-data] {m}", flush=True))
        print(f"[er-data] {args.scenes} {args.split} scenes in {out}")
        return EXIT_OK
    return _run("er-data", body)


def cmd_er_train(args) -> int:
    from er_perception.learned.train import TrainSettings, train

    def body():
        settings = TrainSettings(data_dir=args.data, output_dir=args.out, steps=args.steps,
                                 batch_size=args.batch_size,
                                 hue_batch_size=args.hue_batch_size, learning_rate=args.lr,
                                 seed=args.seed, hidden=args.hidden, threads=args.threads)
        out = train(settings, say=lambda m: print(f"[er-train] {m}", flush=True))
        print(f"[er-train] saved {out}")
        return EXIT_OK
    return _run("er-train", body)


def cmd_er_eval(args) -> int:
    from er_perception.learned.evaluate import evaluate

    def body():
        backend = _backend(args)
        report = evaluate(backend, args.scenes, args.seed, args.camera,
                          say=lambda m: print(f"[er-eval] {m}", flush=True))
        print(json.dumps({k: v for k, v in report.items() if k != "first_failures"}, indent=2))
        _write(report, args.out, "er-eval")
        return EXIT_OK
    return _run("er-eval", body)


def cmd_er_erqa(args) -> int:
    from er_perception.erqa import NotAQuestionAnswerer, evaluate, load_questions

    def body():
        questions = load_questions(args.file)
        try:
            report = evaluate(_backend(args), questions,
                              say=lambda m: print(f"[er-erqa] {m}", flush=True))
        except NotAQuestionAnswerer as exc:
            print(f"[er-erqa] {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"[er-erqa] {report['backend']}: {report['correct']}/{report['questions']} correct "
              f"(exact-match accuracy {report['accuracy']:.3f})")
        _write(report, args.out, "er-erqa")
        return EXIT_OK
    return _run("er-erqa", body)


def add_er_commands(sub) -> None:
    """Register the ER commands on the CLI's subparsers."""
    from er_perception.learned import TEST_SEED_OFFSET

    def backend_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", required=True,
                       help="ER backend: sim, learned, hf, gemini (er_perception.backends)")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a backend option, as the node's <backend>.<option> parameters "
                            "(e.g. model_path=runs/er); repeatable")
        p.add_argument("--out", default=None, help="write the full report (JSON) here")

    data = sub.add_parser("er-data", help="render simulator scenes to train the learned ER "
                                          "backend on")
    data.add_argument("--out", required=True, help="directory for scenes.npz and meta.json")
    data.add_argument("--scenes", type=int, default=2000)
    data.add_argument("--split", choices=["train", "test"], default="train",
                      help="train never shows the held-out colour x object pairs")
    data.add_argument("--seed", type=int, default=None,
                      help=f"first scene seed (default 0 for train, {TEST_SEED_OFFSET} for test)")
    data.add_argument("--camera", default="cam_high")
    data.set_defaults(func=cmd_er_data)

    tr = sub.add_parser("er-train", help="train the learned ER backend's grounding head (CPU)")
    tr.add_argument("--data", required=True, help="a directory from er-data --split train")
    tr.add_argument("--out", required=True, help="where the model goes (model_path)")
    tr.add_argument("--steps", type=int, default=2500)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--hue-batch-size", type=int, default=8,
                    help="hue-turned images per step (object maps and boxes only; 0: none)")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--hidden", type=int, default=64, help="channels of the head")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    tr.set_defaults(func=cmd_er_train)

    ev = sub.add_parser("er-eval", help="pointing accuracy and box AP50 of an ER backend on "
                                        "held-out simulator scenes it renders")
    backend_args(ev)
    ev.add_argument("--scenes", type=int, default=200, help="test scenes (3 queries each)")
    ev.add_argument("--seed", type=int, default=TEST_SEED_OFFSET, help="first test scene seed")
    ev.add_argument("--camera", default="cam_high")
    ev.set_defaults(func=cmd_er_eval)

    qa = sub.add_parser("er-erqa", help="ERQA-format multiple-choice accuracy of an ER backend "
                                        "that answers questions")
    backend_args(qa)
    qa.add_argument("--file", required=True, help="ERQA-format JSON lines (see er_perception.erqa)")
    qa.set_defaults(func=cmd_er_erqa)
