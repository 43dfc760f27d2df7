"""`bimanual-vla`: the user's entry point to the stack.

    bimanual-vla up                       bring the stack up (MuJoCo ALOHA 2 by default); Ctrl-C stops it
    bimanual-vla instruct "TEXT"          send an instruction to a running stack, print progress
    bimanual-vla demo                     up + one instruction + a video of it, then shut down
    bimanual-vla evaluate                 up once, N episodes of a task on seeds S, S+1, ...;
                                          success rate with its 95 % interval to bench/results/
    bimanual-vla record --out DIR         up once (or --attach), N episodes recorded as a
                                          LeRobotDataset v3 (cameras, joints, commands, success)
    bimanual-vla serve --policy P         serve a policy (name or checkpoint) over the openpi
                                          websocket protocol: the "cloud backbone"
    bimanual-vla er-data / er-train       render scenes / train the learned ER backend
    bimanual-vla er-eval --backend B      pointing accuracy, box AP50 on held-out sim scenes
    bimanual-vla er-erqa --backend B      ERQA-format multiple-choice accuracy

Exit codes: 0 success, 1 the instruction or the stack failed, 2 bad usage or no stack reachable,
130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from bimanual_core.config import (ConfigError, load_stack, load_tasks, repo_root,
                                   runtime_environment)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """`node.param=value` strings -> {node: {param: value}} with YAML-typed values."""
    import yaml
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise SystemExit(f"--set expects node.param=value, got {item!r}")
        out.setdefault(node, {})[param] = yaml.safe_load(value)
    return out


def _start_stack(args, log_dir: Path):
    from bimanual_core.bringup import StackProcesses, node_launch_specs, with_backbone_policy
    overrides = _parse_overrides(args.set)
    if getattr(args, "policy", None):
        _, overrides = with_backbone_policy(overrides, args.policy)
    overrides.setdefault("aloha_sim", {}).update({"task": args.task, "seed": args.seed})
    specs = node_launch_specs(embodiment=args.embodiment, sim=not args.real, overrides=overrides)
    procs = StackProcesses(specs, log_dir, echo=sys.stdout)
    procs.start()
    return procs


def _report_dead(procs) -> bool:
    failure = procs.failure()
    if failure:
        print(f"[up] {failure}", file=sys.stderr)
    return failure is not None


def cmd_up(args) -> int:
    from bimanual_core.client import StackClient
    log_dir = Path(args.log_dir or repo_root() / "runs" / f"up-{datetime.now():%Y%m%d-%H%M%S}")
    procs = _start_stack(args, log_dir)
    try:
        with StackClient(args.embodiment) as client:
            failure = procs.wait_until_ready(client.wait_ready, args.ready_timeout)
            if failure:
                print(f"[up] the stack did not become ready: {failure}", file=sys.stderr)
                return EXIT_FAILED
            print(f"[up] stack ready ({len(procs.specs)} nodes). In another shell: "
                  "bimanual-vla instruct \"pick up the red cube\". Ctrl-C stops everything.",
                  flush=True)
            while not _report_dead(procs):
                time.sleep(0.5)
            return EXIT_FAILED
    except KeyboardInterrupt:
        print("\n[up] shutting down", flush=True)
        return EXIT_OK
    finally:
        codes = procs.stop()
        print(f"[up] stopped: {codes}", flush=True)


def cmd_instruct(args) -> int:
    from bimanual_core.client import StackClient, format_feedback
    with StackClient(args.embodiment) as client:
        try:
            program = Path(args.program).read_text() if args.program else ""
            outcome = client.execute(args.instruction, task=args.task, policy=args.policy,
                                     time_limit_s=args.time_limit,
                                     on_feedback=lambda fb: print(format_feedback(fb), flush=True),
                                     server_timeout=args.server_timeout, planner=args.planner,
                                     program=program, step_retries=args.retries)
        except KeyboardInterrupt:
            print("\ncanceled: the robot stops and holds its position", file=sys.stderr)
            return EXIT_INTERRUPTED
    if len(outcome.steps) > 1:
        print(f"plan ({outcome.planner}): " + "; ".join(outcome.steps)
              + f" -- {outcome.steps_succeeded} of {len(outcome.steps)} steps succeeded")
    print(f"result: {'SUCCESS' if outcome.success else 'REFUSED' if outcome.refused else 'FAILURE'}"
          f" ({outcome.status}) in {outcome.duration_s:.1f} s: {outcome.reason}"
          + (f" [checked by {outcome.success_check}]" if outcome.success_check else ""))
    if outcome.status == "unreachable":
        return EXIT_USAGE
    return EXIT_OK if outcome.success else EXIT_FAILED


def save_episode_media(frames, out_dir: Path, fps: float) -> list[Path]:
    """Write the episode as an MP4 and a strip of 6 frames (PNG)."""
    import imageio.v2 as imageio
    import numpy as np
    written = []
    if not frames:
        return written
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / "episode.mp4"
    try:
        imageio.mimwrite(video, frames, fps=fps, macro_block_size=1)
        written.append(video)
    except Exception as exc:  # noqa: BLE001 - the strip below is still worth writing
        print(f"[demo] could not write the video ({exc}); writing the strip only", file=sys.stderr)
    picks = np.linspace(0, len(frames) - 1, num=min(6, len(frames))).round().astype(int)
    strip = out_dir / "strip.png"
    imageio.imwrite(strip, np.concatenate([frames[i] for i in picks], axis=1))
    written.append(strip)
    return written


def cmd_demo(args) -> int:
    from bimanual_core.client import StackClient, format_feedback
    from bimanual_core.instructions import parse_instruction
    from instruction_server.success import judge, load_success_criteria, object_states

    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    out_dir = Path(args.out or repo_root() / "runs" / f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    t_start = time.monotonic()
    procs = _start_stack(args, out_dir / "logs")
    try:
        with StackClient(args.embodiment, record_camera=args.camera) as client:
            print("[demo] waiting for the stack ...", flush=True)
            failure = procs.wait_until_ready(client.wait_ready, args.ready_timeout)
            if failure:
                print(f"[demo] the stack did not become ready: {failure}", file=sys.stderr)
                return EXIT_FAILED
            print(f"[demo] stack ready after {time.monotonic() - t_start:.1f} s; "
                  f"instruction: \"{args.instruction}\"", flush=True)
            outcome = client.execute(args.instruction, time_limit_s=args.time_limit,
                                     on_feedback=lambda fb: print(format_feedback(fb), flush=True))
            print(f"[demo] result: {'SUCCESS' if outcome.success else 'FAILURE'} "
                  f"({outcome.status}, checked by {outcome.success_check or '-'}): {outcome.reason}")
            time.sleep(0.5)
            independent_ok = True
            if client.objects_first is not None and client.objects_last is not None:
                verdict = judge(parse_instruction(args.instruction),
                                object_states(client.objects_first.objects),
                                object_states(client.objects_last.objects),
                                load_success_criteria())
                independent_ok = verdict.success
                print(f"[demo] simulator state: {verdict.reason}")
            media = save_episode_media(list(client.frames), out_dir, fps=args.video_fps)
            for path in media:
                print(f"[demo] saved {path}")
            ok = outcome.success and independent_ok
            if _report_dead(procs):
                ok = False
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        procs.stop()
    print(f"[demo] {'done' if ok else 'FAILED'} in {time.monotonic() - t_start:.1f} s "
          f"(logs in {out_dir / 'logs'})")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_evaluate(args) -> int:
    from bimanual_core.eval_runner import default_output, run_evaluation
    out = Path(args.out) if args.out else default_output(args.policy, args.task,
                                                         args.embodiment)
    report = run_evaluation(args.policy, args.task, args.episodes, args.seed, args.embodiment,
                            _parse_overrides(args.set), out=out, time_limit_s=args.time_limit,
                            log_dir=args.log_dir, ready_timeout_s=args.ready_timeout)
    if report["episodes"]:
        low, high = report["ci95"]
        print(f"[eval] {args.policy} on {args.task}: {report['successes']}/{report['episodes']} "
              f"= {100 * report['success_rate']:.1f} % "
              f"(95 % CI {100 * low:.1f}-{100 * high:.1f} %), "
              f"median episode {report['wall_duration_s']['median']:.1f} s wall")
    if report["status"] == "stack_failed":
        print("[eval] stopped early: the stack failed (see above); partial results written",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_INTERRUPTED if report["status"] == "interrupted" else EXIT_OK


def cmd_record(args) -> int:
    from vla_data.lerobot import DatasetError
    from vla_data.recorder import record
    overrides = _parse_overrides(args.set)
    if args.attach and overrides:
        print("--set applies to a stack this command starts; not with --attach", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = record(args.out, args.task, args.episodes, args.seed, args.policy,
                         args.embodiment, overrides, resume=args.resume,
                         keep_failures=args.keep_failures, attach=args.attach,
                         time_limit_s=args.time_limit, log_dir=args.log_dir,
                         ready_timeout_s=args.ready_timeout)
    except DatasetError as exc:
        print(f"[record] {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = summary["failures"]
    print(f"[record] {summary['episodes_kept']} episodes written ({len(failed)} failed, "
          f"{'written too' if args.keep_failures else 'not written'}) in "
          f"{summary['seconds']:.0f} s; "
          f"{summary['dataset']} holds {summary['episodes_total']} episodes, "
          f"{summary['frames_total']} frames")
    for seed, reason in failed:
        print(f"[record]   seed {seed} failed: {reason}")
    if summary["status"] == "stack_failed":
        return EXIT_FAILED
    return EXIT_INTERRUPTED if summary["status"] == "interrupted" else EXIT_OK


def cmd_serve(args) -> int:
    from bimanual_core.config import load_embodiment
    from vla_backbone_node.policy import make_policy
    from vla_backbone_node.remote import PolicyServer
    name, deps = args.policy, {}
    if Path(args.policy).is_dir():
        if not (Path(args.policy) / "config.json").is_file():
            print(f"{args.policy} is not a checkpoint directory (no config.json)", file=sys.stderr)
            return EXIT_USAGE
        name, deps = "learned", {"checkpoint": args.policy}
    embodiment = load_embodiment(args.embodiment)
    try:
        policy = make_policy(name, embodiment, **deps)
    except Exception as exc:  # noqa: BLE001 - whatever stops the policy from loading, say it
        print(f"cannot build policy {args.policy!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    server = None
    try:
        server = PolicyServer(policy, args.host, args.port)
        print(f"[serve] policy {policy.name!r} for {embodiment.name} on "
              f"ws://{args.host}:{server.port} (openpi protocol). Ctrl-C stops.", flush=True)
        server.serve_forever()
    except OSError as exc:
        print(f"[serve] cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\n[serve] shutting down", flush=True)
    finally:
        if server is not None:
            server.stop()
        policy.close()
    return EXIT_OK


def cmd_record_expert(args) -> int:
    from vla_data.expert import ExpertSettings, TakeoverSettings, generate
    common = dict(task=args.task, embodiment=args.embodiment or "aloha2",
                  cameras=_camera_list(args), action_noise=args.action_noise,
                  noise_time_s=args.noise_time, hold_s=args.hold)
    try:
        if args.takeover:
            from bimanual_core.config import resolve_checkpoint
            from vla_model.configuration import BimanualVLAConfig
            checkpoint = resolve_checkpoint(args.takeover)
            # Only the cameras the policy renders can be recorded from its part of an episode.
            common["cameras"] = common["cameras"] or tuple(
                BimanualVLAConfig.from_pretrained(checkpoint).cameras)
            settings = TakeoverSettings(**common, checkpoint=checkpoint,
                                        handover_s=tuple(args.handover),
                                        on_done=args.handover_on_done)
        else:
            settings = ExpertSettings(**common)
    except (OSError, ValueError) as exc:
        print(f"[record-expert] {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _run_collection("record-expert", lambda: generate(
        args.out, settings, args.episodes, args.seed, args.workers,
        keep_failures=args.keep_failures, resume=args.resume))


def cmd_record_views(args) -> int:
    from vla_data.expert import ViewSettings, generate_views
    settings = ViewSettings(task=args.task, embodiment=args.embodiment or "aloha2",
                            cameras=_camera_list(args), views_per_scene=args.views_per_scene,
                            poses_from=args.poses_from)
    return _run_collection("record-views", lambda: generate_views(
        args.out, settings, args.episodes, args.seed, args.workers, resume=args.resume))


def _camera_list(args) -> tuple[str, ...]:
    return tuple(args.cameras.split(",")) if args.cameras else ()


def _run_collection(name: str, collect) -> int:
    from vla_data.lerobot import DatasetError
    try:
        summary = collect()
    except DatasetError as exc:
        print(f"[{name}] {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[{name}] kept {summary['episodes_kept']} episodes "
          f"({len(summary['failures'])} failed) in {summary['seconds']:.0f} s; {summary['dataset']} "
          f"holds {summary['episodes_total']} episodes, {summary['frames_total']} frames")
    return EXIT_OK


def _train_settings(args, **extra):
    from vla_model.training import TrainSettings
    model = {}
    if getattr(args, "cameras", None):
        model["cameras"] = args.cameras.split(",")
    if getattr(args, "action_head", None):
        model["action_head"] = args.action_head
    if getattr(args, "embodiment", None):
        model["embodiment"] = args.embodiment
    return TrainSettings(datasets=args.data, output_dir=args.out, steps=args.steps,
                         batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                         save_every=args.save_every, eval_every=args.eval_every,
                         image_stride=args.image_stride, device=args.device, resume=args.resume,
                         view_datasets=args.views or [], view_batch_size=args.view_batch_size,
                         elapsed_delay=args.elapsed_delay,
                         progress_to_hold=args.progress_to_hold, max_demos=args.max_demos,
                         action_delta_weight=args.action_delta_weight,
                         conditioning_shift=args.conditioning_shift,
                         model=model, **extra)


def _run_training(settings, what: str) -> int:
    from vla_model.training import train
    try:
        metrics = train(settings)
    except (ValueError, OSError) as exc:
        print(f"[{what}] {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[{what}] saved {settings.output_dir}: {metrics}")
    return EXIT_OK


def cmd_train(args) -> int:
    return _run_training(_train_settings(args), "train")


def cmd_finetune(args) -> int:
    from bimanual_core.config import resolve_checkpoint
    settings = _train_settings(args, init_from=resolve_checkpoint(args.checkpoint),
                               warmup_steps=50)
    if args.target_embodiment:
        settings.model["embodiment"] = args.target_embodiment
    return _run_training(settings, "finetune")


def _add_training_args(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    p.add_argument("--data", action="append", required=True,
                   help="a LeRobotDataset v3 directory (repeat for several)")
    p.add_argument("--views", action="append",
                   help="a pointing-view dataset from record-views (repeat for several): "
                        "co-training on where the instruction's object is")
    p.add_argument("--view-batch-size", type=_int_at_least(1), default=16,
                   help="pointing views added to each batch")
    p.add_argument("--out", required=True, help="output directory (checkpoints, log, model)")
    p.add_argument("--steps", type=_int_at_least(1), default=steps)
    p.add_argument("--batch-size", type=_int_at_least(1), default=48)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=_int_at_least(1), default=250)
    p.add_argument("--eval-every", type=_int_at_least(1), default=250)
    p.add_argument("--image-stride", type=_int_at_least(1), default=10,
                   help="control steps between the camera frames used (and cached)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda if present)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint-*")
    p.add_argument("--elapsed-delay", type=float, default=0.0, metavar="S",
                   help="half the samples see their episode time late by up to S seconds, so the "
                        "model reads the task's phase from its cameras (robust to stack pauses)")
    p.add_argument("--progress-to-hold", action="store_true",
                   help="progress labels reach 1 where the demonstrated motion ends, not at the "
                        "last frame (for demonstrations with a long final hold)")
    p.add_argument("--max-demos", type=_int_at_least(1), default=None, metavar="N",
                   help="train on the first N successful demonstrations of the datasets")
    p.add_argument("--action-delta-weight", type=float, default=None, metavar="W",
                   help="regression head: weight of a loss on the chunk's step-to-step changes, "
                        "which keeps chunks from jumping (default: the checkpoint's; new: 0)")
    p.add_argument("--conditioning-shift", type=_int_at_least(0), default=0, metavar="STEPS",
                   help="train with conditioning (the previous chunk's pending actions) up to "
                        "this many steps out of step with the observation, as closed loop")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embodiment", default=None, help="config/<name>.yaml (default from stack.yaml)")
    p.add_argument("--real", action="store_true", help="drive the real robot instead of MuJoCo")
    p.add_argument("--task", default="pick", help="simulation scene: pick, place, handover")
    p.add_argument("--seed", type=int, default=0, help="simulation scene seed")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override a node parameter, e.g. --set action_decoder.blend=naive")
    p.add_argument("--ready-timeout", type=float, default=120.0,
                   help="seconds to wait for the stack to come up")


POLICY_HELP = ("backbone: zero_shot, learned, remote, or a checkpoint (a directory, or a name in "
               "models/ such as default)")


def _add_episode_args(p: argparse.ArgumentParser, seed: int, log_name: str) -> None:
    """The arguments of the commands that run seeded episodes on a simulated stack."""
    p.add_argument("--policy", default="zero_shot", help=POLICY_HELP)
    p.add_argument("--task", default="pick", help="config/tasks.yaml task: pick, place, handover")
    p.add_argument("--episodes", type=_int_at_least(1), default=10)
    p.add_argument("--seed", type=_int_at_least(0), default=seed,
                   help=f"episode i uses scene seed SEED + i (default {seed})")
    p.add_argument("--embodiment", default=None, help="config/<name>.yaml (default from stack.yaml)")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="seconds of sim time per episode (0 = the instruction server's default)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override a node parameter of the stack started here, e.g. "
                        "--set action_decoder.blend=naive")
    p.add_argument("--log-dir", default=None, help=f"node logs (default runs/{log_name}-<time>)")
    p.add_argument("--ready-timeout", type=float, default=120.0,
                   help="seconds to wait for the stack to come up (or to be reachable)")


def _add_sim_collection_args(p: argparse.ArgumentParser, count: str, default: int,
                             seed: int) -> None:
    p.add_argument("--task", default="pick")
    p.add_argument(f"--{count}", dest="episodes", type=_int_at_least(1), default=default)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=seed, help="first scene seed")
    p.add_argument("--workers", type=_int_at_least(1), default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--cameras", default="", help="comma-separated (default: all)")
    p.add_argument("--embodiment", default=None)
    p.add_argument("--resume", action="store_true", help="append, skipping seeds already tried")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bimanual-vla", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="bring the stack up; Ctrl-C shuts it down")
    _add_stack_args(up)
    up.add_argument("--log-dir", default=None, help="where node logs go (default runs/up-<time>)")
    up.set_defaults(func=cmd_up)

    ins = sub.add_parser("instruct", help="send an instruction to a running stack")
    ins.add_argument("instruction", help='e.g. "pick up the red cube"')
    ins.add_argument("--task", default="", help="task hint (pick, place, handover)")
    ins.add_argument("--policy", default="", help="backbone policy for this goal")
    ins.add_argument("--time-limit", type=float, default=0.0, help="seconds (0 = server default)")
    ins.add_argument("--planner", default="", choices=["", "rule", "transformers", "gemini"],
                     help="planner of long instructions (default: the server's)")
    ins.add_argument("--program", default="", help="a code-as-policy program file to run instead "
                     "of planning (robot API: agent.program)")
    ins.add_argument("--retries", type=int, default=-1,
                     help="retries of a failed step (-1 = server default)")
    ins.add_argument("--server-timeout", type=float, default=30.0,
                     help="seconds to wait for the action server")
    ins.add_argument("--embodiment", default="aloha2")
    ins.set_defaults(func=cmd_instruct)

    rex = sub.add_parser("record-expert", help="scripted-expert demonstrations in MuJoCo, "
                         "without ROS (fast, parallel) as a LeRobotDataset v3")
    _add_sim_collection_args(rex, "episodes", 100, 100_000)
    rex.add_argument("--keep-failures", action="store_true")
    rex.add_argument("--action-noise", type=float, default=0.0, metavar="RAD",
                     help="std of a smooth random offset added to the executed arm joints while "
                          "the recorded action stays the expert's (DART recovery data; 0: off)")
    rex.add_argument("--noise-time", type=float, default=0.5, metavar="S",
                     help="correlation time of that offset")
    rex.add_argument("--hold", type=float, default=0.5, metavar="S",
                     help="sim seconds recorded after the plan ends, the arm holding its pose")
    rex.add_argument("--takeover", default=None, metavar="CHECKPOINT",
                     help="DAgger-style corrections: this checkpoint drives each scene until "
                          "the handover, then the expert re-plans from there and finishes; "
                          "training learns only from the expert's frames")
    rex.add_argument("--handover", type=float, nargs=2, default=(3.0, 15.0),
                     metavar=("MIN_S", "MAX_S"),
                     help="with --takeover: the handover time, uniform in [MIN_S, MAX_S] of "
                          "simulated time per scene")
    rex.add_argument("--handover-on-done", action="store_true",
                     help="with --takeover: also hand over where the policy says done and the "
                          "task is judged undone (settle_s later)")
    rex.set_defaults(func=cmd_record_expert)

    rv = sub.add_parser("record-views", help="pointing views for co-training (many object "
                        "layouts, arms at demonstrated poses, the target object's position)")
    _add_sim_collection_args(rv, "scenes", 500, 200_000)
    rv.add_argument("--views-per-scene", type=_int_at_least(1), default=8)
    rv.add_argument("--poses-from", default=None,
                    help="a demonstration dataset whose joint states place the arms "
                         "(default: home pose only)")
    rv.set_defaults(func=cmd_record_views)

    tr = sub.add_parser("train", help="train a VLA model from scratch on demonstrations")
    _add_training_args(tr, steps=2000, lr=5e-4)
    tr.add_argument("--cameras", default="cam_high,cam_left_wrist,cam_right_wrist",
                    help="comma-separated cameras the model uses")
    tr.add_argument("--action-head", choices=("regression", "flow"), default="regression")
    tr.add_argument("--embodiment", default=None)
    tr.set_defaults(func=cmd_train)

    ft = sub.add_parser("finetune", help="fine-tune a checkpoint on a few demonstrations")
    ft.add_argument("--checkpoint", default="default", help="directory, or a name in models/")
    _add_training_args(ft, steps=1000, lr=2e-4)
    ft.add_argument("--embodiment", dest="target_embodiment", default=None,   # not stack.yaml's
                    help="fine-tune for this config/<name>.yaml (default: the data's robot_type); "
                         "another robot's checkpoint keeps its shared weights and gets new "
                         "joint layers (runs/<out>/transfer.json lists which)")
    ft.set_defaults(func=cmd_finetune)

    demo = sub.add_parser("demo", help="bring up the simulated stack, run one instruction, record it")
    _add_stack_args(demo)
    demo.add_argument("--policy", default="zero_shot", help=POLICY_HELP)
    demo.add_argument("--instruction", default=None,
                      help="default: the task's instruction from config/tasks.yaml")
    demo.add_argument("--time-limit", type=float, default=120.0)
    demo.add_argument("--camera", default="cam_high", help="camera to record")
    demo.add_argument("--video-fps", type=float, default=10.0)
    demo.add_argument("--out", default=None, help="output directory (default runs/demo-<time>)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("evaluate", help="closed-loop success rate of a policy on a simulated task")
    _add_episode_args(ev, seed=0, log_name="eval")
    ev.add_argument("--out", default=None,
                    help="JSON path, .md beside it (default bench/results/eval_<policy>_<task>.json; "
                         "_<embodiment> before .json for one other than stack.yaml's)")
    ev.set_defaults(func=cmd_evaluate)

    from vla_data.collection import DEMO_SEED_BASE
    rec = sub.add_parser("record", help="record demonstrations from the stack as a LeRobotDataset")
    _add_episode_args(rec, seed=DEMO_SEED_BASE, log_name="record")
    rec.add_argument("--out", required=True, help="dataset directory (LeRobotDataset v3)")
    rec.add_argument("--resume", action="store_true",
                     help="append to the dataset in --out, skipping seeds already tried there")
    rec.add_argument("--keep-failures", action="store_true",
                     help="also write failed episodes (success false)")
    rec.add_argument("--attach", action="store_true",
                     help="record from the stack already running (`bimanual-vla up --task ...`), "
                          "with the policy of its backbone")
    rec.set_defaults(func=cmd_record)

    srv = sub.add_parser("serve", help="serve a backbone policy over the openpi websocket protocol")
    srv.add_argument("--policy", required=True,
                     help="registered policy name, or a checkpoint directory (with config.json)")
    srv.add_argument("--host", default="0.0.0.0", help="address to listen on")
    srv.add_argument("--port", type=_int_at_least(0), default=8000, help="0 picks a free port")
    srv.add_argument("--embodiment", default=None,
                     help="config/<name>.yaml (default from stack.yaml)")
    srv.set_defaults(func=cmd_serve)

    from er_perception.learned.commands import add_er_commands   # er-data/-train/-eval/-erqa
    add_er_commands(sub)
    from er_perception.query_cli import add_query_command       # er-query (a running stack)
    add_query_command(sub)
    return parser


def _interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM both shut the stack down cleanly, also when started in the background
    (where a non-interactive shell leaves SIGINT ignored)."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime_environment(os.environ)
    _interrupt_on_signals()
    try:
        if getattr(args, "embodiment", "x") is None:
            args.embodiment = load_stack().embodiment
        if args.command in ("demo", "evaluate", "record"):
            tasks = load_tasks()["tasks"]
            if args.task not in tasks:
                print(f"unknown task {args.task!r}; known: {', '.join(tasks)}", file=sys.stderr)
                return EXIT_USAGE
            if args.command == "demo" and args.instruction is None:
                args.instruction = tasks[args.task]["instruction"]
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
