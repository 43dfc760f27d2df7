"""The `hf` ER backend on tiny random-weight OWLv2, OWL-ViT and Grounding DINO checkpoints built
here and loaded from disk as a real one would be. Random weights box arbitrary things, so these
tests check the loading path and the output contract (ranges, order, thresholds, 3D from depth),
not what is found: that needs real weights, which cannot be downloaded here."""
import json
import time

import numpy as np
import pytest

from er_perception.backends import make_backend
from er_perception.backends.base import CameraFrame
from er_perception.backends.hf import HfBackend
from er_perception.language import object_phrases
from er_perception.geometry import CameraPose, back_project, from_er, project
from perception_testing import look_at, node_process, spin_until

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HEIGHT, WIDTH = 48, 64                 # not square: OWLv2 pads images to a square
QUERY = "detect the red cube and the bowl"
PHRASES = {"red cube", "bowl"}
DEPTH_M = 0.6
K = np.array([[60.0, 0, (WIDTH - 1) / 2], [0, 60.0, (HEIGHT - 1) / 2], [0, 0, 1]])
POSE = CameraPose(np.array([0.0, -0.25, 0.7]), look_at([0.0, -0.25, 0.7], [0.0, 0.55, 0.0]))


def _clip_tokenizer(directory):
    """A CLIP BPE tokenizer from a tiny vocab.json + merges.txt (letters and a few merges)."""
    from transformers import CLIPTokenizer
    merges = ["r e", "re d</w>", "c u", "cu b", "cub e</w>", "b o", "bo w", "bow l</w>"]
    vocab = ["!", "<|startoftext|>", "<|endoftext|>"]
    vocab += [t for c in "abcdefghijklmnopqrstuvwxyz" for t in (c, c + "</w>")]
    vocab += ["".join(m.split()) for m in merges]
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(directory, pad_token="!", model_max_length=16), len(vocab)


def _owl_checkpoint(directory, model_type):
    """A tiny OWLv2 / OWL-ViT (one-layer 32-wide towers, 64 px images of 4x4 patches)."""
    from transformers import (Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil,
                              Owlv2Processor, OwlViTConfig, OwlViTForObjectDetection,
                              OwlViTImageProcessorPil, OwlViTProcessor)
    tokenizer, vocab_size = _clip_tokenizer(directory.parent / f"{directory.name}_tokenizer")
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = dict(tower, vocab_size=vocab_size, max_position_embeddings=16, pad_token_id=0,
                bos_token_id=1, eos_token_id=2)
    vision = dict(tower, image_size=64, patch_size=16)
    size = {"height": 64, "width": 64}
    if model_type == "owlv2":
        config, model_cls = Owlv2Config, Owlv2ForObjectDetection
        processor = Owlv2Processor(Owlv2ImageProcessorPil(size=size), tokenizer)
    else:
        config, model_cls = OwlViTConfig, OwlViTForObjectDetection
        processor = OwlViTProcessor(OwlViTImageProcessorPil(size=size, crop_size=size), tokenizer)
    torch.manual_seed(0)
    model = model_cls(config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():       # random box heads saturate; keep boxes near the patch priors
        model.box_head.dense2.weight.mul_(0.01)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _grounding_dino_checkpoint(directory):
    """A tiny Grounding DINO: ResNet backbone (no timm), one-layer BERT, 32-wide transformer."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig,
                              GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                              GroundingDinoProcessor, ResNetConfig)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "cube", "bowl", "the"]
    vocab_dir = directory.parent / f"{directory.name}_tokenizer"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    config = GroundingDinoConfig(
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16],
                                     depths=[1, 1, 1, 1], layer_type="basic",
                                     out_features=["stage2", "stage3", "stage4"]),
        use_timm_backbone=False, use_pretrained_backbone=False,
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=32),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, max_text_len=32,
        encoder_n_points=2, decoder_n_points=2)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(directory)
    GroundingDinoProcessor(GroundingDinoImageProcessorPil(size={"shortest_edge": 64,
                                                                "longest_edge": 96}),
                           BertTokenizer.from_pretrained(vocab_dir)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"owlv2": _owl_checkpoint(root / "owlv2", "owlv2"),
            "owlvit": _owl_checkpoint(root / "owlvit", "owlvit"),
            "grounding-dino": _grounding_dino_checkpoint(root / "grounding_dino")}


@pytest.fixture(scope="module")
def backends(checkpoints):
    """Every box above score 0 (random weights score low as often as high)."""
    return {name: make_backend("hf", model_path=str(path), score_threshold=0.0, device="cpu")
            for name, path in checkpoints.items()}


def _frame(with_3d: bool) -> CameraFrame:
    rgb = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    if not with_3d:
        return CameraFrame("cam_high", 7, rgb, K)
    # Depth DEPTH_M with holes (0, NaN) and far outliers that the median must ignore.
    depth = np.full((HEIGHT, WIDTH), DEPTH_M, np.float32)
    flat = depth.reshape(-1)
    flat[::5], flat[1::7], flat[2::11] = 0.0, np.nan, 5.0
    return CameraFrame("cam_high", 7, rgb, K, pose=POSE, depth=depth)


def _centre_px(box_2d):
    ymin, xmin, ymax, xmax = box_2d
    return from_er((ymin + ymax) / 2, (xmin + xmax) / 2, WIDTH, HEIGHT)


@pytest.mark.parametrize("model_type", ["owlv2", "owlvit", "grounding-dino"])
def test_detect_contract(backends, model_type):
    backend = backends[model_type]
    assert backend.model_type == model_type and backend.name == "hf"
    boxes = backend.detect(_frame(with_3d=False), QUERY)
    assert boxes and boxes.message == ""
    assert len(boxes) <= 2 * backend.max_detections
    assert {b.label for b in boxes} <= PHRASES
    scores = [b.score for b in boxes]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    for b in boxes:
        ymin, xmin, ymax, xmax = b.box_2d
        assert 0 <= ymin < ymax <= 1000 and 0 <= xmin < xmax <= 1000, b.box_2d
        assert b.position_3d is None and b.size_3d is None
    assert backend.detect(_frame(with_3d=False), QUERY, max_results=2) == boxes[:2]


def test_owlv2_boxes_match_the_transformers_pipeline(checkpoints):
    """The pipeline is an independent reader of the same model (one label per pass, pixel
    boxes): ours are its boxes, clipped to the image, in 0..1000, in the same order."""
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, pipeline
    path = checkpoints["owlv2"]
    processor = AutoProcessor.from_pretrained(path)
    reader = pipeline("zero-shot-object-detection",
                      model=AutoModelForZeroShotObjectDetection.from_pretrained(path),
                      tokenizer=processor.tokenizer, image_processor=processor.image_processor,
                      device="cpu")
    frame = _frame(with_3d=False)
    expected = []
    for r in reader(Image.fromarray(frame.rgb), candidate_labels=["red cube"], threshold=0.0):
        b = r["box"]
        x0, x1 = np.clip([b["xmin"], b["xmax"]], 0, WIDTH)
        y0, y1 = np.clip([b["ymin"], b["ymax"]], 0, HEIGHT)
        if x1 > x0 and y1 > y0:           # boxes in OWLv2's square padding are not in the image
            expected.append((r["score"], [y0 / HEIGHT, x0 / WIDTH, y1 / HEIGHT, x1 / WIDTH]))
    backend = HfBackend(model_path=str(path), score_threshold=0.0, nms_iou=1.0,
                        max_detections=100)
    boxes = backend.detect(frame, "the red cube")
    assert len(boxes) == len(expected) > 4
    for box, (score, edges) in zip(boxes, expected):
        assert box.score == pytest.approx(score, abs=1e-5)
        # The pipeline rounds to whole pixels.
        np.testing.assert_allclose(np.array(box.box_2d) / 1000, edges, atol=1 / HEIGHT)


def test_nms_and_max_detections(checkpoints):
    path = str(checkpoints["owlv2"])
    frame = _frame(with_3d=False)
    every = HfBackend(model_path=path, score_threshold=0.0, nms_iou=1.0, max_detections=100)
    few = HfBackend(model_path=path, score_threshold=0.0, nms_iou=0.0, max_detections=3)
    all_boxes, boxes = every.detect(frame, "bowl"), few.detect(frame, "bowl")
    assert 1 <= len(boxes) <= 3 < len(all_boxes)
    assert boxes[0] == all_boxes[0]
    for i, a in enumerate(boxes):         # nms_iou 0: no two boxes of a label overlap at all
        for b in boxes[i + 1:]:
            assert min(a.box_2d[2], b.box_2d[2]) <= max(a.box_2d[0], b.box_2d[0]) or \
                min(a.box_2d[3], b.box_2d[3]) <= max(a.box_2d[1], b.box_2d[1])


@pytest.mark.parametrize("model_type", ["owlv2", "grounding-dino"])
def test_3d_is_the_back_projected_box_centre_at_the_median_depth(backends, model_type):
    frame = _frame(with_3d=True)
    backend = backends[model_type]
    boxes = backend.detect(frame, QUERY)
    assert boxes
    for b in boxes:
        v, u = _centre_px(b.box_2d)
        np.testing.assert_allclose(b.position_3d, back_project(u, v, DEPTH_M, K, POSE)[0],
                                   atol=1e-6)
        assert np.array_equal(b.size_3d, np.zeros(3))          # a box gives no depth extent
        pu, pv, z = project(b.position_3d, K, POSE)
        assert (pu[0], pv[0], z[0]) == pytest.approx((u, v, DEPTH_M), abs=1e-6)
    points = backend.point(frame, QUERY)
    grasps = backend.grasp(frame, QUERY)
    for b, p, g in zip(boxes, points, grasps):
        np.testing.assert_allclose(p.position_3d, b.position_3d)
        np.testing.assert_allclose(g.position_3d, b.position_3d)


@pytest.mark.parametrize("model_type", ["owlv2", "owlvit"])
def test_points_and_grasps_follow_the_boxes(backends, model_type):
    backend, frame = backends[model_type], _frame(with_3d=False)
    boxes = backend.detect(frame, "where to grasp the red cube")
    points = backend.point(frame, "point at the red cube")
    grasps = backend.grasp(frame, "where to grasp the red cube")
    assert len(boxes) == len(points) == len(grasps) > 0
    for b, p, g in zip(boxes, points, grasps):
        ymin, xmin, ymax, xmax = b.box_2d
        assert b.label == p.label == g.label == "red cube" and b.score == p.score == g.score
        assert (p.y, p.x) == pytest.approx(((ymin + ymax) / 2, (xmin + xmax) / 2))
        assert (g.y, g.x) == pytest.approx((p.y, p.x))
        w_px, h_px = (xmax - xmin) * WIDTH / 1000, (ymax - ymin) * HEIGHT / 1000
        # Close across the short side: along image x (0) for a tall box, y (pi/2) for a wide one.
        assert g.angle == (0.0 if w_px <= h_px else pytest.approx(np.pi / 2))
        assert g.width * WIDTH / 1000 == pytest.approx(min(w_px, h_px))
        assert g.position_3d is None


@pytest.mark.parametrize("with_3d", [True, False])
def test_trajectory_is_a_straight_line_from_the_object_to_the_target(backends, with_3d):
    backend, frame = backends["owlv2"], _frame(with_3d)
    (traj,) = backend.trajectory(frame, "move the red cube into the bowl", max_results=1)
    assert traj.label == "red cube -> bowl" and len(traj.points) == backend.trajectory_points
    boxes = backend.detect(frame, "the red cube and the bowl")
    source = next(b for b in boxes if b.label == "red cube")
    assert traj.points[0].y == pytest.approx((source.box_2d[0] + source.box_2d[2]) / 2)
    assert traj.points[0].x == pytest.approx((source.box_2d[1] + source.box_2d[3]) / 2)
    if with_3d:
        np.testing.assert_allclose(traj.points[0].position_3d, source.position_3d)
        path = np.array([p.position_3d for p in traj.points])
    else:
        assert all(p.position_3d is None for p in traj.points)
        path = np.array([[p.y, p.x] for p in traj.points])
    steps = np.diff(path, axis=0)                      # equal steps along one direction
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-6)
    target = next(b for b in boxes if b.label == "bowl")
    assert backend.trajectory(frame, "move the red cube into the bowl")[0].score == \
        pytest.approx(source.score * target.score)
    assert "cannot read" in backend.trajectory(frame, "the red cube").message


def test_phrases_longer_than_the_text_tower_are_cut(backends):
    """OWL text towers read 16 tokens; this tokenizer spells most words letter by letter."""
    (box,) = backends["owlv2"].detect(_frame(False), "the long handle of the mug", max_results=1)
    assert box.label == "long handle of the mug"


@pytest.mark.parametrize("model_type", ["owlv2", "grounding-dino"])
def test_threshold_one_gives_empty_answers_with_a_reason(checkpoints, model_type):
    backend = HfBackend(model_path=str(checkpoints[model_type]), score_threshold=1.0)
    frame = _frame(with_3d=True)
    for method, query in (("detect", QUERY), ("point", "the bowl"), ("grasp", "the red cube"),
                          ("trajectory", "put the red cube in the bowl")):
        answer = getattr(backend, method)(frame, query)
        assert answer == [] and "above the score threshold 1" in answer.message, \
            (method, answer.message)
        assert answer.message.endswith("in cam_high")
    assert "names no object" in backend.detect(frame, "where is it").message


def test_grounding_dino_labels_need_grounded_query_words(checkpoints, backends):
    """A box is of the phrase its grounded tokens name; with no token above text_threshold it
    names none and is dropped."""
    path = str(checkpoints["grounding-dino"])
    assert backends["grounding-dino"].detect(_frame(False), QUERY)
    strict = HfBackend(model_path=path, score_threshold=0.0, text_threshold=1.0)
    assert strict.detect(_frame(False), QUERY) == []
    defaults = HfBackend(model_path=path)
    assert (defaults.score_threshold, defaults.text_threshold) == (0.25, 0.25)


@pytest.mark.parametrize("query,phrases", [
    ("the red cube", ["red cube"]),
    ("where to grasp the red cube", ["red cube"]),
    ("Point at the green cube, please.", ["green cube"]),
    ("detect all cubes and the bowl", ["cubes", "bowl"]),
    ("the handle of the mug", ["handle of the mug"]),
    ("where is it", []),
])
def test_object_phrases(query, phrases):
    assert object_phrases(query) == phrases


def test_bad_model_paths_and_options_are_rejected(tmp_path, checkpoints):
    with pytest.raises(ValueError, match="model_path is required"):
        make_backend("hf")
    with pytest.raises(ValueError, match="cannot read .*config.json"):
        HfBackend(model_path=str(tmp_path / "missing"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model; supported model types: owlv2"):
        HfBackend(model_path=str(tmp_path / "bert"))
    (tmp_path / "no_weights").mkdir()
    config = (checkpoints["owlv2"] / "config.json").read_text()
    (tmp_path / "no_weights" / "config.json").write_text(config)
    with pytest.raises(ValueError, match="cannot load the OWLv2 model"):
        HfBackend(model_path=str(tmp_path / "no_weights"))
    good = str(checkpoints["owlv2"])
    with pytest.raises(ValueError, match="score_threshold must be in 0..1"):
        HfBackend(model_path=good, score_threshold=1.5)
    with pytest.raises(ValueError, match="device must be"):
        HfBackend(model_path=good, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            HfBackend(model_path=good, device="cuda")


def test_er_node_answers_with_the_hf_backend(ros_context, tmp_path, checkpoints):
    """The node passes `hf.*` parameters to the backend and answers over ROS, with 3D."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image

    from bimanual_core.config import load_embodiment, load_stack
    from bimanual_core.ros_conversions import SENSOR_QOS, numpy_to_image
    from bimanual_vla.srv import ErQuery
    from perception_testing import quat_wxyz_from_matrix

    cam = load_embodiment("aloha2").camera("cam_high")
    frame = _frame(with_3d=True)
    node = Node("er_hf_test_driver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    pubs = {"rgb": node.create_publisher(Image, cam.image_topic, SENSOR_QOS),
            "depth": node.create_publisher(Image, cam.depth_topic, SENSOR_QOS),
            "info": node.create_publisher(CameraInfo, cam.info_topic, SENSOR_QOS),
            "pose": node.create_publisher(PoseStamped, cam.pose_topic, SENSOR_QOS)}
    client = node.create_client(ErQuery, load_stack().interfaces["er_query_service"])
    last = [0.0]

    def publish():
        if time.monotonic() - last[0] < 0.2:
            return
        last[0] = time.monotonic()
        stamp = node.get_clock().now().to_msg()
        pubs["rgb"].publish(numpy_to_image(frame.rgb, "rgb8", stamp, cam.frame_id))
        pubs["depth"].publish(numpy_to_image(frame.depth, "32FC1", stamp, cam.frame_id))
        info = CameraInfo(width=WIDTH, height=HEIGHT, k=K.ravel().tolist())
        info.header.stamp, info.header.frame_id = stamp, cam.frame_id
        pubs["info"].publish(info)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        p, q = pose.pose.position, pose.pose.orientation
        p.x, p.y, p.z = POSE.position
        q.w, q.x, q.y, q.z = quat_wxyz_from_matrix(POSE.rotation)
        pubs["pose"].publish(pose)

    def call(query_type, query):
        future = client.call_async(ErQuery.Request(query_type=query_type, query=query,
                                                   with_3d=True))
        assert spin_until(executor, future.done, timeout_s=10, step=publish)
        return future.result()

    Q = ErQuery.Request
    params = {"backend": "hf", "hf.model_path": checkpoints["owlv2"], "hf.score_threshold": 0.0,
              "hf.device": "cpu", "hf.max_detections": 3}
    with node_process("er_perception_node", params, tmp_path / "er_perception.log"):
        assert spin_until(executor, client.service_is_ready, timeout_s=30)
        assert spin_until(executor, lambda: call(Q.BOXES, "the bowl").success, timeout_s=20,
                          step=publish)
        boxes = call(Q.BOXES, "where is the bowl")
        grasps = call(Q.GRASPS, "where to grasp the red cube")
    assert boxes.success and boxes.message == "", boxes.message
    assert 1 <= len(boxes.boxes) <= 3 and boxes.header.frame_id == "world"
    for b in boxes.boxes:
        assert b.label == "bowl" and b.has_position_3d
        assert 0 <= b.box_2d[0] < b.box_2d[2] <= 1000 and 0 <= b.box_2d[1] < b.box_2d[3] <= 1000
        v, u = _centre_px(b.box_2d)
        expected = back_project(u, v, DEPTH_M, K, POSE)[0]
        got = np.array([b.position_3d.x, b.position_3d.y, b.position_3d.z])
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert grasps.success and grasps.grasps and grasps.grasps[0].label == "red cube"
    node.destroy_node()
