"""Benchmark of the real-time action decoder against the real stack processes.

Usage: .venv/bin/python bench/decoder.py [--quick] [--duration-s 600] [--delays 0,0.1,0.2,0.4]
                                         [--episodes 5] [--phases steady,delays,kill]
                                         [--out bench/results/decoder.json]

Phases (all in MuJoCo, every node its own process, as `bimanual-vla up` starts them):
  a) steady run: pick episodes with scene resets back to back for --duration-s while the decoder
     executes (rtc, no injected delay); loop jitter, missed ticks and stalls from
     /action_decoder/metrics, plus the periods of the commands as this process receives them.
  b+c) per injected backbone delay (vla_backbone `inject_delay_s`), --episodes seeded pick
     episodes with rtc and with naive switching: the largest joint step at a chunk switch and
     inside chunks, from the commands on the forward position topic, and the task success rate.
  d) kill test: SIGKILL the backbone mid-pick; time until the commanded velocity is zero, and
     the largest commanded velocity/acceleration relative to the limits.

Clock: the simulator owns /clock and pauses it while rendering, and chunks are stamped with the
sim time of their observation, so the stack's decoder cannot run on the wall clock (every chunk
would be "entirely in the past"); it runs on sim time, and its loop figures are on that clock.
For the issue's wall-clock target, phase a) also runs a second decoder process with use_sim_time
false in a ROS domain of its own, fed by a synthetic backbone in this process, while the
simulated stack works beside it: same code, same CPU load, real clock. The headline
jitter_p99_ms, missed_ticks and stalls are that decoder's: jitter_p99_ms is the p99 of
|period - nominal| over the whole run (from the decoder's cumulative jitter histogram, a bin's
upper edge), the worst 500-tick window's p99 is jitter_p99_ms_max beside it. --decoder-priority
gives both decoders SCHED_FIFO (realtime_priority of the wall-clock decoder's control thread).

Results go to --out (bench/results/decoder.json): the headline keys, one section per phase, the
machine and the parameters; --phases reruns some phases and keeps the other sections.

Only the backbone and the decoder are restarted between configurations (their parameters are
read once at start-up); the simulator, cameras, ER and instruction server stay up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from action_decoder_node.controller import histogram_quantile_ms
from bimanual_core.bringup import StackProcesses, node_launch_specs
from bimanual_core.config import load_embodiment, load_stack, repo_root

VARIABLE_NODES = ("vla_backbone", "action_decoder")
SWITCH_WINDOW = 2         # ticks after a chunk's arrival that count as its switch (see analysis)
REST_STEP = 1e-6          # rad per tick below which the command is "not moving"
READY_TIMEOUT_S = 120.0
PHASES = ("steady", "delays", "kill")


# ---------------------------------------------------------------- analysis (no ROS)

def joint_steps(positions: np.ndarray) -> np.ndarray:
    """Largest |change| over joints between consecutive commands: one value per step."""
    positions = np.asarray(positions, float)
    if len(positions) < 2:
        return np.zeros(0)
    return np.abs(np.diff(positions, axis=0)).max(axis=1)


def switch_mask(command_times: np.ndarray, chunk_times: np.ndarray,
                window: int = SWITCH_WINDOW) -> np.ndarray:
    """Which steps (into command i from i-1) are chunk switches: the first `window` commands
    received after each chunk arrived. The backbone publishes /action_chunk just before its
    service answer leaves, so the first command after the arrival may still predate the
    decoder's acceptance; the window covers it."""
    command_times = np.asarray(command_times, float)
    mask = np.zeros(max(len(command_times) - 1, 0), bool)
    for t in chunk_times:
        first = int(np.searchsorted(command_times, t, side="right"))
        for i in range(first, min(first + window, len(command_times))):
            if i >= 1:
                mask[i - 1] = True
    return mask


def switch_figures(segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """Max joint step at switches and inside chunks over episodes of (times, positions, chunks)."""
    at_switch, inside = [0.0], [0.0]
    n_switch = 0
    for times, positions, chunk_times in segments:
        steps = joint_steps(positions)
        mask = switch_mask(times, chunk_times)
        n_switch += int(len(chunk_times))
        if mask.any():
            at_switch.append(float(steps[mask].max()))
        if (~mask).any():
            inside.append(float(steps[~mask].max()))
    return {"switch_step_max": max(at_switch), "inchunk_step_max": max(inside),
            "switches": n_switch}


def limit_ratios(positions: np.ndarray, period: float, lower: np.ndarray, upper: np.ndarray,
                 vel: np.ndarray, acc: np.ndarray) -> dict:
    """Commanded velocity/acceleration (finite differences at the command period) relative to
    the limits, and how many commands lay outside the position limits."""
    q = np.asarray(positions, float)
    out = {"commands": int(len(q)),
           "outside_position_limits": int(np.sum(np.any((q < lower - 1e-9) | (q > upper + 1e-9),
                                                         axis=1))) if len(q) else 0,
           "max_velocity_ratio": 0.0, "max_acceleration_ratio": 0.0}
    if len(q) >= 2:
        out["max_velocity_ratio"] = float((np.abs(np.diff(q, axis=0)) / period / vel).max())
    if len(q) >= 3:
        a = np.abs(np.diff(q, n=2, axis=0)) / period ** 2
        out["max_acceleration_ratio"] = float((a / acc).max())
    return out


def ticks_until_rest(positions: np.ndarray) -> int | None:
    """Index of the first command from which the commanded position never moves again."""
    steps = joint_steps(positions)
    moving = np.nonzero(steps > REST_STEP)[0]
    if len(steps) == 0:
        return 0
    if len(moving) == 0:
        return 0
    last = int(moving[-1]) + 1          # command index of the last motion
    return last if last < len(positions) - 1 else None


def period_stats(times: np.ndarray, nominal: float) -> dict:
    d = np.diff(np.asarray(times, float))
    if len(d) == 0:
        return {"n": 0}
    dev = np.abs(d - nominal)
    return {"n": int(len(d)), "mean_ms": 1e3 * float(d.mean()),
            "jitter_p99_ms": 1e3 * float(np.quantile(dev, 0.99)),
            "max_ms": 1e3 * float(d.max()), "late_over_1.5x": int(np.sum(d > 1.5 * nominal))}


def run_jitter(first, last) -> dict:
    """Loop period jitter over the whole run between two DecoderMetrics, from the cumulative
    histogram (each figure is a bin's upper edge: an upper bound); the p99 of each 500-tick
    window is reported beside it as jitter_p99_ms_max/median."""
    counts = np.asarray(last.jitter_histogram, np.int64) - np.asarray(first.jitter_histogram,
                                                                      np.int64)
    bin_ms = last.jitter_histogram_bin_ms
    worst = np.flatnonzero(counts)
    return {"jitter_p99_ms_run": histogram_quantile_ms(counts, 0.99, bin_ms),
            "jitter_p999_ms_run": histogram_quantile_ms(counts, 0.999, bin_ms),
            "jitter_max_ms_bin": bin_ms * float(worst[-1] + 1) if worst.size else None,
            "ticks_off_by_over_2ms": int(counts[int(round(2.0 / bin_ms)):].sum()),
            "jitter_histogram_bin_ms": bin_ms, "jitter_histogram": counts.tolist()}


def raise_priority(pid: int, priority: int) -> None:
    """Put every thread of process `pid` in SCHED_FIFO at `priority` (needs root/CAP_SYS_NICE):
    the sim-time decoder ticks in its executor, so the whole process gets it. (The wall-clock
    decoder gets `realtime_priority` instead: its control thread alone, as a deployment would.)"""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))


# ---------------------------------------------------------------- recording (ROS)

@dataclass
class Recorder:
    """Everything the bench hears, stamped with wall (monotonic) and sim time on receipt."""
    commands: list = field(default_factory=list)      # (wall, sim, positions)
    chunks: list = field(default_factory=list)        # (wall, sim, stamp, horizon)
    metrics: list = field(default_factory=list)       # (wall, DecoderMetrics)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self) -> tuple[int, int, int]:
        with self.lock:
            return len(self.commands), len(self.chunks), len(self.metrics)

    def since(self, mark) -> tuple[list, list, list]:
        with self.lock:
            return (self.commands[mark[0]:], self.chunks[mark[1]:], self.metrics[mark[2]:])


class Bench:
    def __init__(self, args, log_dir: Path):
        self.args = args
        self.emb = load_embodiment("aloha2")
        self.names = load_stack().interfaces
        self.domain = random.randint(1, 100)
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain))
        self.log_dir = log_dir
        self.base: StackProcesses | None = None
        self.var: StackProcesses | None = None
        self.client = None
        self.rec = Recorder()
        self.sim_time = 0.0

    # ---- stack ---------------------------------------------------------------------------
    def start(self) -> None:
        from bimanual_core.client import StackClient
        specs = node_launch_specs(overrides={"aloha_sim": {"task": "pick", "seed": self.args.seed}})
        self.base = StackProcesses([s for s in specs if s.name not in VARIABLE_NODES],
                                   self.log_dir / "base", env=self.env)
        self.base.start()
        self.client = StackClient(domain_id=self.domain)
        self._subscribe()

    def configure(self, delay: float, blend: str) -> None:
        """(Re)start the backbone and the decoder with this delay and blend; wait until ready."""
        if self.var is not None:
            self.var.stop()
        overrides = {"vla_backbone": {"inject_delay_s": float(delay)},
                     "action_decoder": {"blend": blend}}
        specs = [s for s in node_launch_specs(overrides=overrides) if s.name in VARIABLE_NODES]
        self.var = StackProcesses(specs, self.log_dir / f"{blend}-{delay:g}", env=self.env)
        self.var.start()
        self._wait_services()
        if self.args.decoder_priority:
            raise_priority(self.var.procs["action_decoder"].pid, self.args.decoder_priority)
        print(f"[bench] backbone delay {delay:g} s, decoder {blend}: ready", flush=True)

    def _wait_services(self) -> None:
        from bimanual_vla.srv import GetActionChunk
        from std_srvs.srv import Trigger
        node = self.client.node
        clients = [node.create_client(GetActionChunk, self.names["get_chunk_service"]),
                   node.create_client(Trigger, self.names["decoder_start_service"])]
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while not all(c.service_is_ready() for c in clients):
                dead = {**self.base.dead(), **self.var.dead()}
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"stack not ready (exited: {dead})")
                time.sleep(0.2)
            if not self.client.wait_ready(READY_TIMEOUT_S):
                raise RuntimeError("the instruction server or observations never came up")
        finally:
            for c in clients:
                node.destroy_client(c)
        time.sleep(1.0)     # the instruction server's clients discover the new services

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for procs in (self.var, self.base):
            if procs is not None:
                procs.stop()

    def _subscribe(self) -> None:
        from bimanual_vla.msg import ActionChunk, DecoderMetrics
        from std_msgs.msg import Float64MultiArray

        from bimanual_core.ros_conversions import RELIABLE_QOS, time_to_sec
        node, rec = self.client.node, self.rec

        def on_command(msg):
            with rec.lock:
                rec.commands.append((time.monotonic(), self.client.sim_time,
                                     np.asarray(msg.data, float)))

        def on_chunk(msg):
            with rec.lock:
                rec.chunks.append((time.monotonic(), self.client.sim_time,
                                   time_to_sec(msg.header.stamp), int(msg.horizon)))

        def on_metrics(msg):
            with rec.lock:
                rec.metrics.append((time.monotonic(), msg))
        node.create_subscription(Float64MultiArray, self.emb.driver["forward_position_topic"],
                                 on_command, RELIABLE_QOS)
        node.create_subscription(ActionChunk, self.names["action_chunk_topic"], on_chunk,
                                 RELIABLE_QOS)
        node.create_subscription(DecoderMetrics, self.names["decoder_metrics_topic"], on_metrics,
                                 RELIABLE_QOS)

    # ---- episodes ------------------------------------------------------------------------
    def reset_scene(self, seed: int | None = None) -> None:
        """New scene: the simulator's next seed, or `seed` (the same scenes for every config)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        from std_srvs.srv import Trigger
        node = self.client.node
        reset = node.create_client(Trigger, "/sim/reset")
        set_params = node.create_client(SetParameters, "/aloha_sim/set_parameters")
        try:
            if seed is not None:
                if not set_params.wait_for_service(timeout_sec=10.0):
                    raise RuntimeError("/aloha_sim/set_parameters is not available")
                reply = self.client._wait(set_params.call_async(SetParameters.Request(
                    parameters=[Parameter("seed", value=seed).to_parameter_msg()])), 10.0)
                if reply is None or not reply.results[0].successful:
                    raise RuntimeError(f"the simulator refused seed {seed}: {reply}")
            if not reset.wait_for_service(timeout_sec=10.0):
                raise RuntimeError("/sim/reset is not available")
            reply = self.client._wait(reset.call_async(Trigger.Request()), 20.0)
            if reply is None or not reply.success:
                raise RuntimeError(f"/sim/reset failed: {reply}")
        finally:
            node.destroy_client(reset)
            node.destroy_client(set_params)
        time.sleep(1.0)    # a fresh observation of the new scene reaches the backbone

    def episode(self, seed: int | None = None):
        """Reset, run one pick; returns (outcome, commands, chunks, metrics) recorded meanwhile."""
        self.reset_scene(seed)
        mark = self.rec.mark()
        outcome = self.client.execute(load_task_instruction(), time_limit_s=self.args.time_limit_s)
        time.sleep(0.3)
        return (outcome, *self.rec.since(mark))


def load_task_instruction() -> str:
    import yaml
    tasks = yaml.safe_load((repo_root() / "config" / "tasks.yaml").read_text())
    return tasks["tasks"]["pick"]["instruction"]


def segment(commands, chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An episode's commands as (wall times, positions) and its chunk arrival times."""
    if not commands:
        return np.zeros(0), np.zeros((0, 0)), np.zeros(0)
    return (np.array([c[0] for c in commands]), np.array([c[2] for c in commands]),
            np.array([c[0] for c in chunks]))


class WallClockDecoder:
    """A second decoder process on the real clock, in a ROS domain of its own, fed by a synthetic
    backbone here: chunks of a slow sine around home, stamped with the wall time of the request
    and answered after `latency_s`. It runs beside the simulated stack so that it shares the CPU
    with the real backbone, the renderer and the rest, which is what its loop timing must
    survive."""

    AMPLITUDE = 0.2      # rad on every arm joint
    FREQUENCY = 0.25     # Hz

    def __init__(self, log_dir: Path, domain: int, latency_s: float = 0.05, priority: int = 0):
        self.emb = load_embodiment("aloha2")
        self.names = load_stack().interfaces
        self.domain, self.latency = domain, latency_s
        self.arm = [i for i, j in enumerate(self.emb.joints) if j.kind == "arm"]
        specs = [s for s in node_launch_specs(sim=False, overrides={"action_decoder": {
            "blend": "rtc", "use_sim_time": False, "realtime_priority": priority}})
            if s.name == "action_decoder"]
        self.procs = StackProcesses(specs, log_dir / "wall-clock-decoder",
                                    env=dict(os.environ, ROS_DOMAIN_ID=str(domain)))
        self.metrics: list = []
        self.served = 0

    def target(self, t: np.ndarray) -> np.ndarray:
        """The sine at wall times t (seconds since the bench started it)."""
        q = np.tile(self.emb.home, (len(t), 1))
        q[:, self.arm] += self.AMPLITUDE * np.sin(2 * np.pi * self.FREQUENCY * t)[:, None]
        return q

    def start(self) -> None:
        import rclpy
        from bimanual_vla.msg import ActionChunk, DecoderMetrics
        from bimanual_vla.srv import GetActionChunk
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Header
        from std_srvs.srv import Trigger

        from bimanual_core.ros_conversions import RELIABLE_QOS, sec_to_duration, sec_to_time
        self.procs.start()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain)
        node = self.node = Node("bench_wall_clock_backbone", context=self.context)
        emb, period = self.emb, self.emb.control_period
        self.t0 = node.get_clock().now().nanoseconds * 1e-9

        def serve(request, response):
            now = node.get_clock().now().nanoseconds * 1e-9
            actions = self.target(now - self.t0 + period * np.arange(emb.chunk_horizon))
            time.sleep(self.latency)           # a busy executor thread, like inference
            response.chunk = ActionChunk(
                header=Header(stamp=sec_to_time(now)), joint_names=emb.joint_names,
                horizon=emb.chunk_horizon, control_period=sec_to_duration(period),
                actions=actions.ravel().tolist(), request_id=request.request_id,
                policy_name="bench_sine")
            response.success = True
            self.served += 1
            return response
        node.create_service(GetActionChunk, self.names["get_chunk_service"], serve)
        node.create_subscription(DecoderMetrics, self.names["decoder_metrics_topic"],
                                 self.metrics.append, RELIABLE_QOS)
        joints = node.create_publisher(JointState, emb.driver["joint_states_topic"], RELIABLE_QOS)
        start = node.create_client(Trigger, self.names["decoder_start_service"])
        node.create_timer(0.1, lambda: joints.publish(JointState(
            name=emb.joint_names, position=self.target(np.array([0.0]))[0].tolist())))
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.procs.dead() or time.monotonic() > deadline:
                raise RuntimeError(f"wall-clock decoder did not start: "
                                   f"{self.procs.log_tail('action_decoder')}")
            if start.wait_for_service(timeout_sec=1.0):
                future = start.call_async(Trigger.Request())
                while not future.done() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if future.done() and future.result().success:
                    break
            time.sleep(0.2)
        self.first = len(self.metrics)
        print("[bench] wall-clock decoder executing", flush=True)

    def figures(self) -> dict:
        """Loop figures since start(): counters as deltas, jitter p99 over 500-tick windows."""
        ms = [m for m in self.metrics[self.first:] if m.state == "executing"]
        if len(ms) < 2:
            return {"error": "no metrics from the wall-clock decoder while executing"}
        first, last = ms[0], ms[-1]
        jitter = [m.loop_jitter_p99_ms for m in ms]
        return {"clock": "wall (use_sim_time false)", "backbone": (
                    f"synthetic sine chunks, {1e3 * self.latency:g} ms answer time"),
                "ticks": int(last.ticks - first.ticks),
                **run_jitter(first, last),
                "jitter_p99_ms_max": float(max(jitter)),
                "jitter_p99_ms_median": float(np.median(jitter)),
                "loop_period_mean_ms": float(np.mean([m.loop_period_mean_ms for m in ms])),
                "missed_ticks": int(last.missed_ticks - first.missed_ticks),
                "stalls": int(last.stalls - first.stalls),
                "request_failures": int(last.request_failures - first.request_failures),
                "chunks_received": int(last.chunks_received - first.chunks_received),
                "chunks_rejected": int(last.chunks_rejected - first.chunks_rejected)}

    def stop(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.procs.stop()


# ---------------------------------------------------------------- phases

def phase_steady(bench: Bench, duration_s: float) -> dict:
    """Episodes back to back for duration_s; decoder loop figures over the whole span, from the
    stack's decoder (sim time) and from a wall-clock decoder running beside it."""
    bench.configure(0.0, "rtc")
    wall_clock = WallClockDecoder(bench.log_dir, bench.domain % 100 + 1,
                                  priority=bench.args.decoder_priority)
    try:
        wall_clock.start()
        result = _steady_episodes(bench, duration_s)
        result["wall_clock_decoder"] = wall_clock.figures()
    finally:
        wall_clock.stop()
    return result


def _steady_episodes(bench: Bench, duration_s: float) -> dict:
    t0 = time.monotonic()
    mark = bench.rec.mark()
    episodes = successes = 0
    while time.monotonic() - t0 < duration_s:
        outcome = bench.episode()[0]
        episodes += 1
        successes += bool(outcome.success)
        print(f"[bench] steady episode {episodes}: {outcome.status} ({outcome.reason}) at "
              f"{time.monotonic() - t0:.0f} s", flush=True)
    wall = time.monotonic() - t0
    commands, chunks, metrics = bench.rec.since(mark)
    first_metrics = metrics[0][1] if metrics else None
    last = metrics[-1][1] if metrics else None
    executing = [m for _, m in metrics if m.state == "executing"]
    period = bench.emb.control_period
    wall_times = np.array([c[0] for c in commands])
    sim_times = np.array([c[1] for c in commands if c[1] is not None])
    result = {
        "clock": "sim (the stack's decoder, use_sim_time true)",
        "wall_s": wall, "episodes": episodes, "successes": successes,
        "commands": len(commands), "chunks": len(chunks),
        "decoder_jitter_p99_ms_max": max((m.loop_jitter_p99_ms for m in executing), default=None),
        "decoder_jitter_p99_ms_median": (float(np.median([m.loop_jitter_p99_ms for m in executing]))
                                         if executing else None),
        "missed_ticks": (int(last.missed_ticks - first_metrics.missed_ticks) if last else None),
        "stalls": int(last.stalls - first_metrics.stalls) if last else None,
        "request_failures": (int(last.request_failures - first_metrics.request_failures)
                             if last else None),
        "chunks_rejected": (int(last.chunks_rejected - first_metrics.chunks_rejected)
                            if last else None),
        "backbone_latency_ms_max": max((m.backbone_latency_ms for m in executing), default=None),
        "command_receive_period_wall": period_stats(_contiguous(wall_times), period),
        "command_receive_period_sim": period_stats(_contiguous(sim_times), period),
    }
    return result


def _contiguous(times: np.ndarray) -> np.ndarray:
    """Command times minus the idle gaps between episodes (>= 1 s without a command)."""
    if len(times) < 2:
        return times
    d = np.diff(times)
    d = d[d < 1.0]
    return np.concatenate([[0.0], np.cumsum(d)])


def phase_delays(bench: Bench, delays: list[float], episodes: int) -> dict:
    """Switch steps (rtc and naive) and success (both) per injected delay."""
    out = {}
    for blend in ("rtc", "naive"):
        for delay in delays:
            bench.configure(delay, blend)
            segments, successes, latencies = [], 0, []
            for i in range(episodes):
                outcome, commands, chunks, metrics = bench.episode(bench.args.seed + i)
                successes += bool(outcome.success)
                segments.append(segment(commands, chunks))
                latencies += [m.backbone_latency_ms for _, m in metrics if m.backbone_latency_ms]
                print(f"[bench] {blend} delay {delay:g} s episode {i + 1}/{episodes}: "
                      f"{outcome.status} ({outcome.reason})", flush=True)
            figures = switch_figures(segments)
            figures.update(episodes=episodes, successes=successes,
                           success_rate=successes / episodes if episodes else None,
                           backbone_latency_ms_max=max(latencies, default=None),
                           **limit_ratios_of(bench, [s[1] for s in segments]))
            out.setdefault(f"{delay:g}", {})[blend] = figures
            print(f"[bench] {blend} delay {delay:g}: {json.dumps(figures)}", flush=True)
    return out


def limit_ratios_of(bench: Bench, position_lists: list[np.ndarray]) -> dict:
    emb = bench.emb
    ratios = [limit_ratios(p, emb.control_period, emb.lower, emb.upper, emb.max_velocity,
                           emb.max_acceleration) for p in position_lists if len(p)]
    return {"outside_position_limits": sum(r["outside_position_limits"] for r in ratios),
            "max_velocity_ratio": max((r["max_velocity_ratio"] for r in ratios), default=0.0),
            "max_acceleration_ratio": max((r["max_acceleration_ratio"] for r in ratios),
                                          default=0.0)}


def phase_kill(bench: Bench, kill_after_s: float) -> dict:
    """Start a pick, SIGKILL the backbone once the arm moves fast, and watch the commands."""
    bench.configure(0.0, "rtc")
    bench.reset_scene(bench.args.seed)
    mark = bench.rec.mark()
    result: dict = {}
    done = threading.Event()

    def run_goal():
        result["outcome"] = bench.client.execute(load_task_instruction(), time_limit_s=30.0)
        done.set()
    threading.Thread(target=run_goal, daemon=True).start()
    # Mid-motion: the first moment after kill_after_s of motion that the arm moves fast.
    moving_since = None
    deadline = time.monotonic() + 60.0
    kill = None
    while time.monotonic() < deadline and not done.is_set():
        commands = bench.rec.since(mark)[0]
        if len(commands) >= 2:
            step = float(np.abs(commands[-1][2] - commands[-2][2]).max())
            if step > 0.002 and moving_since is None:
                moving_since = time.monotonic()
            if moving_since is not None and time.monotonic() - moving_since > kill_after_s \
                    and step > 0.002:
                proc = bench.var.procs["vla_backbone"]
                os.killpg(proc.pid, signal.SIGKILL)
                kill = (time.monotonic(), bench.client.sim_time, len(commands))
                break
        time.sleep(0.01)
    if kill is None:
        return {"error": "the arm never moved fast enough to kill the backbone mid-motion"}
    deadline = time.monotonic() + 20.0
    while True:     # until the commands have been still for a second (50 ticks), or 20 s
        commands, chunks, _ = bench.rec.since(mark)
        after = np.array([c[2] for c in commands[kill[2] - 3:]])   # 2 before for the 1st accel
        rest = ticks_until_rest(after[2:])
        if (rest is not None and len(after) - 2 - rest > 50) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    emb = bench.emb
    last_chunk_end = max((c[2] + c[3] * emb.control_period for c in chunks), default=None)
    out = {"killed_at_sim_s": kill[1],
           "stop_time_s": rest * emb.control_period if rest is not None else None,
           "stop_ticks": rest,
           "queue_end_after_kill_s": (last_chunk_end - kill[1]
                                      if last_chunk_end is not None and kill[1] else None),
           "velocity_at_kill_ratio": float((np.abs(after[2] - after[1]) / emb.control_period
                                            / emb.max_velocity).max()),
           **limit_ratios(after, emb.control_period, emb.lower, emb.upper, emb.max_velocity,
                          emb.max_acceleration)}
    if out["queue_end_after_kill_s"] is not None and out["stop_time_s"] is not None:
        out["stop_after_queue_end_s"] = out["stop_time_s"] - out["queue_end_after_kill_s"]
    done.wait(5.0)       # the goal itself may run on to its time limit; not waited for
    outcome = result.get("outcome")
    out["goal_status"] = outcome.status if outcome else "no result"
    out["goal_reason"] = outcome.reason if outcome else ""
    return out


# ---------------------------------------------------------------- main

def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0, help="steady phase length (wall)")
    p.add_argument("--delays", default="0,0.1,0.2,0.4", help="injected backbone delays, seconds")
    p.add_argument("--episodes", type=int, default=5, help="pick episodes per delay and blend")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 30 s steady phase, delays 0 and 0.4, 1 episode each")
    p.add_argument("--kill-after-s", type=float, default=1.0,
                   help="seconds of motion before the backbone is killed")
    p.add_argument("--time-limit-s", type=float, default=60.0, help="per pick episode")
    p.add_argument("--seed", type=int, default=0,
                   help="scene seed of episode 1 of every delay and blend (episode i: seed + i)")
    p.add_argument("--decoder-priority", type=int, default=0,
                   help="SCHED_FIFO priority (1-99): the wall-clock decoder's control thread "
                        "(its realtime_priority), every thread of the stack's decoder; 0: normal")
    p.add_argument("--phases", default=",".join(PHASES),
                   help="phases to run; the others' sections of --out are kept")
    p.add_argument("--out", type=Path, default=repo_root() / "bench" / "results" / "decoder.json")
    args = p.parse_args(argv)
    if args.quick:
        args.duration_s, args.delays, args.episodes = 30.0, "0,0.4", 1
    args.phase_list = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not args.phase_list or set(args.phase_list) - set(PHASES):
        p.error(f"--phases: choose from {','.join(PHASES)}, got {args.phases!r}")
    args.delay_list = [float(d) for d in args.delays.split(",") if d.strip()]
    if not args.delay_list or any(not (d >= 0) for d in args.delay_list):
        p.error(f"--delays must be non-negative seconds, got {args.delays!r}")
    if args.episodes < 1 or not args.duration_s >= 0:
        p.error("--episodes must be >= 1 and --duration-s >= 0")
    if not 0 <= args.decoder_priority <= 99:
        p.error(f"--decoder-priority must be 0..99, got {args.decoder_priority}")
    return args


HEADLINE = ("jitter_p99_ms", "missed_ticks", "stalls", "switch_step_max", "inchunk_step_max",
            "naive_switch_step_max", "naive_inchunk_step_max", "stop_time_s",
            "success_rate_by_delay", "success_drop_points")


def headline(report: dict) -> dict:
    """The issue's figures from whichever phase sections the report holds (None if absent).
    Loop figures come from the wall-clock decoder: the issue's target is on the real clock."""
    out = dict.fromkeys(HEADLINE)
    wall = report.get("steady", {}).get("wall_clock_decoder", {})
    out.update(jitter_p99_ms=wall.get("jitter_p99_ms_run"), missed_ticks=wall.get("missed_ticks"),
               stalls=wall.get("stalls"))
    per_delay = report.get("per_delay")
    if per_delay:
        for key, blend, figure in (("switch_step_max", "rtc", "switch_step_max"),
                                   ("inchunk_step_max", "rtc", "inchunk_step_max"),
                                   ("naive_switch_step_max", "naive", "switch_step_max"),
                                   ("naive_inchunk_step_max", "naive", "inchunk_step_max")):
            out[key] = max(v[blend][figure] for v in per_delay.values())
        rates = {d: v["rtc"]["success_rate"] for d, v in per_delay.items()}
        delays = sorted(rates, key=float)
        out["success_rate_by_delay"] = rates
        out["success_drop_points"] = 100 * (rates[delays[0]] - rates[delays[-1]])
    if "kill" in report:
        out["stop_time_s"] = report["kill"].get("stop_time_s")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-decoder-"))
    print(f"[bench] logs under {log_dir}", flush=True)
    bench = Bench(args, log_dir)
    report = {}
    if set(args.phase_list) != set(PHASES) and args.out.exists():
        report = json.loads(args.out.read_text())     # keep the sections not rerun
    parameters = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")    # each phase's figures as soon as known
    phases = {"steady": lambda: phase_steady(bench, args.duration_s),
              "delays": lambda: phase_delays(bench, args.delay_list, args.episodes),
              "kill": lambda: phase_kill(bench, args.kill_after_s)}
    sections = {"steady": "steady", "delays": "per_delay", "kill": "kill"}
    try:
        bench.start()
        for name in args.phase_list:
            figures = phases[name]()
            report[sections[name]] = figures
            report.setdefault("runs", {})[sections[name]] = {
                "started_utc": started.isoformat(timespec="seconds"), "parameters": parameters}
            partial.write_text(json.dumps(report, indent=2, default=str))
            print(f"[bench] {name}: {json.dumps(figures, default=str)}", flush=True)
    except KeyboardInterrupt:
        print("[bench] interrupted", file=sys.stderr)
        return 130
    finally:
        bench.stop()
    report.update(headline(report), machine=machine(),
                  decoder_params=load_stack().node("action_decoder").parameters,
                  updated_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    partial.unlink(missing_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in HEADLINE}, indent=2))
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
