"""The decoder benchmark's analysis (bench/decoder.py, no ROS): switch vs in-chunk steps, limits,
time to rest, and its command line."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "decoder.py"
_spec = importlib.util.spec_from_file_location("bench_decoder", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench      # its dataclasses look their module up by name
_spec.loader.exec_module(bench)


def test_a_jump_right_after_a_chunk_arrives_counts_as_a_switch_step():
    times = np.arange(10) * 0.02
    positions = np.zeros((10, 2))
    positions[:, 0] = np.arange(10) * 0.01      # steady motion: 0.01 per tick
    positions[6:, 1] = 0.05                     # a 0.05 jump into command 6
    chunk_arrivals = np.array([0.105])          # between commands 5 (0.10) and 6 (0.12)
    mask = bench.switch_mask(times, chunk_arrivals, window=2)
    assert np.nonzero(mask)[0].tolist() == [5, 6]        # steps into commands 6 and 7
    figures = bench.switch_figures([(times, positions, chunk_arrivals)])
    assert figures["switch_step_max"] == pytest.approx(0.05)
    assert figures["inchunk_step_max"] == pytest.approx(0.01)
    assert figures["switches"] == 1


def test_limit_ratios_flag_fast_and_out_of_range_commands():
    period = 0.02
    lower, upper = np.array([-1.0]), np.array([1.0])
    q = np.array([[0.0], [0.0], [0.02], [1.5]])   # accelerates, then leaves the range
    r = bench.limit_ratios(q, period, lower, upper, vel=np.array([2.0]), acc=np.array([10.0]))
    assert r["outside_position_limits"] == 1
    assert r["max_velocity_ratio"] == pytest.approx(1.48 / period / 2.0)
    assert r["max_acceleration_ratio"] == pytest.approx(1.46 / period ** 2 / 10.0)


def test_rest_is_the_first_command_after_the_last_motion():
    q = np.array([[0.0], [0.1], [0.15], [0.16], [0.16], [0.16]])
    assert bench.ticks_until_rest(q) == 3
    assert bench.ticks_until_rest(q[:4]) is None          # still moving at the end


def test_quick_mode_and_bad_delays():
    args = bench.parse_args(["--quick"])
    assert args.delay_list == [0.0, 0.4] and args.episodes == 1 and args.duration_s == 30.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--delays", "0,-0.1"])


def test_headline_takes_the_worst_case_over_delays_and_the_wall_clock_loop_figures():
    per_delay = {
        "0": {"rtc": {"switch_step_max": 0.01, "inchunk_step_max": 0.05, "success_rate": 1.0},
              "naive": {"switch_step_max": 0.09, "inchunk_step_max": 0.05, "success_rate": 1.0}},
        "0.4": {"rtc": {"switch_step_max": 0.02, "inchunk_step_max": 0.04, "success_rate": 0.8},
                "naive": {"switch_step_max": 0.3, "inchunk_step_max": 0.06, "success_rate": 0.6}}}
    report = {"per_delay": per_delay, "kill": {"stop_time_s": 0.3},
              "steady": {"wall_clock_decoder": {"jitter_p99_ms_run": 0.8, "missed_ticks": 0,
                                                "stalls": 0}}}
    h = bench.headline(report)
    assert (h["switch_step_max"], h["inchunk_step_max"]) == (0.02, 0.05)
    assert (h["naive_switch_step_max"], h["naive_inchunk_step_max"]) == (0.3, 0.06)
    assert h["success_rate_by_delay"] == {"0": 1.0, "0.4": 0.8}
    assert h["success_drop_points"] == pytest.approx(20.0)
    assert (h["jitter_p99_ms"], h["missed_ticks"], h["stalls"]) == (0.8, 0, 0)
    assert h["stop_time_s"] == 0.3
    assert bench.headline({})["switch_step_max"] is None      # phases not run: no figure


def test_run_jitter_is_the_histogram_between_two_metrics_messages():
    from types import SimpleNamespace
    first = SimpleNamespace(jitter_histogram=[10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                            jitter_histogram_bin_ms=0.25)
    last = SimpleNamespace(jitter_histogram=[1100, 5, 0, 0, 0, 0, 0, 0, 0, 6],
                           jitter_histogram_bin_ms=0.25)
    figures = bench.run_jitter(first, last)
    assert figures["jitter_p99_ms_run"] == 0.25           # 1090 of 1101 ticks in the first bin
    assert figures["jitter_p999_ms_run"] == 2.5           # the six in the last bin
    assert figures["jitter_max_ms_bin"] == 2.5 and figures["ticks_off_by_over_2ms"] == 6
