"""Camera synchronisation and preprocessing without ROS: matching, staleness, rates, joints."""
import math

import numpy as np
import pytest

from camera_perception.preprocess import JointOrder, resize_rgb
from camera_perception.sync import NS_PER_S, CameraSynchronizer, RateMeter

MS = 1_000_000
CAMS = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"]


def feed(sync, camera, rate_hz, t0_s, t1_s, latency_ms=5.0, offset_ms=0.0, clock_error_ms=0.0):
    """Frames of one camera at `rate_hz` from t0 (+ offset) to t1, received `latency_ms` later;
    `clock_error_ms` shifts the stamps only, as a camera with a wrong clock would."""
    period = NS_PER_S / rate_hz
    n = int((t1_s - t0_s) * rate_hz)
    for i in range(n):
        taken = int(t0_s * NS_PER_S + offset_ms * MS + i * period)
        sync.add_frame(camera, taken + int(clock_error_ms * MS), taken + int(latency_ms * MS),
                       f"{camera}@{taken}")


def by_name(health):
    return {h.name: h for h in health}


def test_frames_within_slop_form_one_set_at_the_newest_common_time():
    sync = CameraSynchronizer(CAMS[:2], sync_slop_s=0.02, stale_after_s=0.5)
    for stamp_ms in (0, 100, 200):
        sync.add_frame("cam_high", stamp_ms * MS, stamp_ms * MS, "high")
    for stamp_ms in (15, 112):          # cam_low lags; its last frame matches cam_high@100 only
        sync.add_frame("cam_low", stamp_ms * MS, stamp_ms * MS, "low")
    synced = sync.synchronise(now_ns=210 * MS)
    assert synced is not None
    assert synced.stamp_ns in (100 * MS, 112 * MS)
    assert synced.frames["cam_high"].stamp_ns == 100 * MS
    assert synced.frames["cam_low"].stamp_ns == 112 * MS
    assert all(h.ok and h.status == "ok" for h in synced.health)
    # Nothing new since: no second observation from the same frames.
    assert sync.synchronise(now_ns=220 * MS) is None
    # A new matching pair produces a newer set.
    sync.add_frame("cam_low", 205 * MS, 225 * MS, "low")
    assert sync.synchronise(now_ns=230 * MS).frames["cam_low"].stamp_ns == 205 * MS


def test_frames_outside_slop_wait_for_a_match():
    sync = CameraSynchronizer(CAMS[:2], sync_slop_s=0.01, stale_after_s=0.5)
    sync.add_frame("cam_high", 100 * MS, 100 * MS, "a")
    sync.add_frame("cam_low", 100 * MS, 100 * MS, "b")
    assert sync.synchronise(105 * MS) is not None
    sync.add_frame("cam_high", 200 * MS, 200 * MS, "a")
    sync.add_frame("cam_low", 150 * MS, 200 * MS, "b")     # 50 ms apart: not one set
    assert sync.synchronise(205 * MS) is None
    sync.add_frame("cam_low", 195 * MS, 210 * MS, "b")
    assert sync.synchronise(215 * MS).stamp_ns in (195 * MS, 200 * MS)


def test_stale_and_missing_cameras_are_left_out_but_reported():
    sync = CameraSynchronizer(CAMS, sync_slop_s=0.05, stale_after_s=0.5)
    feed(sync, "cam_high", 30, 0.0, 2.0)
    feed(sync, "cam_low", 20, 0.0, 2.0, offset_ms=3)
    feed(sync, "cam_left_wrist", 10, 0.0, 1.0, offset_ms=7)      # stops at t = 1 s
    # cam_right_wrist never publishes.
    synced = sync.synchronise(now_ns=2 * NS_PER_S)
    assert list(synced.frames) == ["cam_high", "cam_low"]
    health = by_name(synced.health)
    assert health["cam_left_wrist"].status == "stale" and not health["cam_left_wrist"].ok
    assert health["cam_right_wrist"].status == "missing"
    assert math.isnan(health["cam_right_wrist"].latency_ms)
    assert math.isnan(health["cam_left_wrist"].age_ms)
    assert health["cam_high"].ok and 0 <= health["cam_high"].age_ms <= 50
    assert synced.stamp_ns > 1.9 * NS_PER_S


def test_rates_and_latency_are_measured_per_camera():
    sync = CameraSynchronizer(CAMS[:3], sync_slop_s=0.05, stale_after_s=0.5, rate_window_s=2.0)
    feed(sync, "cam_high", 30, 0.0, 3.0, latency_ms=12)
    feed(sync, "cam_low", 15, 0.0, 3.0, latency_ms=40)
    feed(sync, "cam_left_wrist", 10, 0.0, 3.0, latency_ms=3)
    health = by_name(sync.health(now_ns=3 * NS_PER_S))
    assert health["cam_high"].rate_hz == pytest.approx(30, rel=0.02)
    assert health["cam_low"].rate_hz == pytest.approx(15, rel=0.02)
    assert health["cam_left_wrist"].rate_hz == pytest.approx(10, rel=0.02)
    assert health["cam_high"].latency_ms == pytest.approx(12, abs=1e-6)
    assert health["cam_low"].latency_ms == pytest.approx(40, abs=1e-6)
    # A stopped stream's rate decays to zero once its frames leave the window.
    assert by_name(sync.health(now_ns=6 * NS_PER_S))["cam_high"].rate_hz == 0.0


def test_rate_meter_needs_two_arrivals():
    meter = RateMeter(1.0)
    assert meter.rate_hz(0) == 0.0
    meter.tick(0)
    assert meter.rate_hz(0) == 0.0
    meter.tick(NS_PER_S // 4)
    assert meter.rate_hz(NS_PER_S // 4) == pytest.approx(4.0)


def test_bad_frames_are_reported_and_excluded():
    sync = CameraSynchronizer(CAMS[:2], sync_slop_s=0.05, stale_after_s=0.5)
    sync.add_frame("cam_high", 0, 0, "a")
    sync.add_frame("cam_low", 0, 0, "b")
    sync.add_bad_frame("cam_low", 50 * MS, 50 * MS, "'mono16' is not a colour encoding")
    sync.add_frame("cam_high", 60 * MS, 60 * MS, "a")
    synced = sync.synchronise(70 * MS)
    assert list(synced.frames) == ["cam_high"]
    assert by_name(synced.health)["cam_low"].status.startswith("bad_encoding: 'mono16'")
    # A good frame clears the report.
    sync.add_frame("cam_low", 100 * MS, 100 * MS, "b")
    sync.add_frame("cam_high", 100 * MS, 100 * MS, "a")
    assert set(sync.synchronise(110 * MS).frames) == {"cam_high", "cam_low"}
    # A camera whose last frames were bad and which then stopped is stale.
    sync.add_bad_frame("cam_low", 150 * MS, 150 * MS, "bad")
    assert by_name(sync.health(160 * MS))["cam_low"].status == "bad_encoding: bad"
    assert by_name(sync.health(700 * MS))["cam_low"].status == "stale"


def test_persistently_offset_camera_is_unsynchronised_not_blocking():
    sync = CameraSynchronizer(CAMS[:2], sync_slop_s=0.02, stale_after_s=0.5)
    feed(sync, "cam_high", 30, 2.0, 2.4)
    feed(sync, "cam_low", 30, 2.0, 2.4, clock_error_ms=-2000)     # a camera clock 2 s behind
    synced = sync.synchronise(now_ns=int(2.4 * NS_PER_S))
    assert list(synced.frames) == ["cam_high"]
    assert by_name(synced.health)["cam_low"].status == "unsynchronised"


def test_joint_state_closest_to_reference():
    sync = CameraSynchronizer(CAMS[:1], sync_slop_s=0.05, stale_after_s=0.5)
    for i in range(50):                                         # 50 Hz joint states
        sync.add_joint_state(i * 20 * MS, i * 20 * MS, i)
    sync.add_frame("cam_high", 433 * MS, 440 * MS, "img")
    assert sync.synchronise(450 * MS).joint_state.data == 22   # stamp 440 ms is closest to 433
    sync.add_frame("cam_high", 1500 * MS, 1500 * MS, "img")     # joint states stopped at 980 ms
    assert sync.synchronise(1510 * MS).joint_state is None


def test_clock_going_back_restarts_synchronisation():
    """After a simulation reset, frames from the old timeline must not suppress new ones."""
    sync = CameraSynchronizer(CAMS[:1], sync_slop_s=0.05, stale_after_s=0.5)
    sync.add_frame("cam_high", 5 * NS_PER_S, 5 * NS_PER_S, "old")
    assert sync.synchronise(5 * NS_PER_S).stamp_ns == 5 * NS_PER_S
    assert sync.synchronise(30 * MS) is None                    # reset; nothing buffered yet
    sync.add_frame("cam_high", 30 * MS, 32 * MS, "new")
    again = sync.synchronise(40 * MS)
    assert again.stamp_ns == 30 * MS and again.frames["cam_high"].data == "new"


@pytest.mark.parametrize("kwargs,match", [
    (dict(cameras=[], sync_slop_s=0.05, stale_after_s=0.5), "at least one"),
    (dict(cameras=["a", "a"], sync_slop_s=0.05, stale_after_s=0.5), "duplicate"),
    (dict(cameras=["a"], sync_slop_s=float("nan"), stale_after_s=0.5), "sync_slop_s"),
    (dict(cameras=["a"], sync_slop_s=0.05, stale_after_s=0.0), "stale_after_s"),
])
def test_invalid_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CameraSynchronizer(**kwargs)


def test_unknown_camera_is_rejected():
    sync = CameraSynchronizer(["cam_high"], 0.05, 0.5)
    with pytest.raises(ValueError, match="unknown camera 'cam_x'"):
        sync.add_frame("cam_x", 0, 0, None)


def test_joint_order_reorders_and_validates():
    order = JointOrder(["a", "b", "c"])
    sample = order.reorder(["c", "a", "b", "extra"], [3.0, 1.0, 2.0, 9.0],
                           velocity=[0.3, 0.1, 0.2, 0.9])
    np.testing.assert_allclose(sample.position, [1, 2, 3])
    np.testing.assert_allclose(sample.velocity, [0.1, 0.2, 0.3])
    assert sample.effort.size == 0
    with pytest.raises(ValueError, match="lacks configured joints \\['c'\\]"):
        order.reorder(["a", "b"], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite joint positions for \\['b'\\]"):
        order.reorder(["a", "b", "c"], [1.0, float("nan"), 3.0])
    with pytest.raises(ValueError, match="3 joint names but 2 positions"):
        order.reorder(["a", "b", "c"], [1.0, 2.0])


def test_resize_rgb():
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[:, 160:] = 255
    out = resize_rgb(rgb, 224, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    assert resize_rgb(rgb, 0, 0) is rgb
    with pytest.raises(ValueError, match="both 0"):
        resize_rgb(rgb, 0, 224)
    with pytest.raises(ValueError, match="uint8"):
        resize_rgb(rgb.astype(np.float32), 224, 224)
