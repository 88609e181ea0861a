"""The edge kernels: camera images -> model input, model actions -> publishable joint targets.

On CPU: the torch references against an independent numpy computation, the input checks, the
source lookup. On a GPU: the cupy kernels against the references, on fresh random inputs.
"""

import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from flashrt_ros.runtime import kernels as K
from flashrt_ros.runtime.kernels import (
    ENCODINGS,
    Postprocessor,
    Preprocessor,
    image_from_buffer,
    postprocess_reference,
    preprocess_reference,
)

TOL = 1e-5  # in [-1, 1] units; one uint8 step is 2 / 255 = 7.8e-3
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (and cupy)")


# --------------------------------------------------------------------------- an independent oracle
def _taps(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear resampling as an [n_out, n_in] matrix (align_corners=False, no antialias).

    The source coordinate is computed as torch defines it, in float32 with one rounding after
    the multiply-add (an exact float64 product rounded once); the blend is done in float64.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    out = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * out.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0)).astype(np.float64)
    m = np.zeros((n_out, n_in))
    for o, s in enumerate(src):
        left = min(int(np.floor(s)), n_in - 1)
        frac = min(max(s - left, 0.0), 1.0)
        m[o, left] += 1.0 - frac
        m[o, min(left + 1, n_in - 1)] += frac
    return m


NAMED_CHANNELS = {"rgb8": "rgb", "bgr8": "bgr", "rgba8": "rgba", "bgra8": "bgra", "mono8": "l"}


def numpy_preprocess(pixels: np.ndarray, encoding: str, size: int) -> np.ndarray:
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1).astype(np.float64)
    names = NAMED_CHANNELS[encoding]
    planes = [pixels[..., names.index(c if names != "l" else "l")] for c in "rgb"]
    rows, cols = _taps(pixels.shape[0], size), _taps(pixels.shape[1], size)
    return np.stack([rows @ p @ cols.T for p in planes]) / 255.0 * 2.0 - 1.0


def random_image(rng, height, width, encoding):
    return rng.integers(0, 256, (height, width, ENCODINGS[encoding].channels), dtype=np.uint8)


SIZES = [  # (height, width, output size)
    (480, 640, 32),  # downscale, 4:3
    (37, 53, 16),  # odd sizes
    (5, 7, 16),  # upscale
    (16, 16, 16),  # same size: the identity
    (1, 1, 4),  # a single pixel
    (3, 200, 8),  # extreme aspect: up in y, down in x
]


# --------------------------------------------------------------------------- preprocess reference
@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("height,width,size", SIZES)
def test_reference_resizes_like_an_independent_bilinear(encoding, height, width, size):
    rng = np.random.default_rng(hash((encoding, height, width)) % 2**32)
    img = random_image(rng, height, width, encoding)
    got = preprocess_reference(img, encoding, size)
    assert got.shape == (3, size, size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), numpy_preprocess(img, encoding, size), rtol=0, atol=TOL)


def test_same_size_is_only_normalisation():
    img = random_image(np.random.default_rng(1), 16, 16, "rgb8")
    got = preprocess_reference(img, "rgb8", 16)
    assert torch.equal(got, torch.from_numpy(img).permute(2, 0, 1).float() / 255 * 2 - 1)


def test_upscale_by_hand():
    # 1x2 mono [0, 255] -> 4 columns at source x = 0 (clamped), 0.25, 0.75, 1 (clamped).
    img = np.array([[0, 255]], dtype=np.uint8)
    got = preprocess_reference(img, "mono8", 4)
    assert torch.equal(got[0, 0], torch.tensor([-1.0, -0.5, 0.5, 1.0]))


def test_bgr_is_swapped_alpha_dropped_mono_replicated():
    rng = np.random.default_rng(2)
    rgb = random_image(rng, 30, 40, "rgb8")
    ref = preprocess_reference(rgb, "rgb8", 12)
    assert torch.equal(preprocess_reference(rgb[..., ::-1].copy(), "bgr8", 12), ref)
    alpha = rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)
    assert torch.equal(preprocess_reference(np.concatenate([rgb, alpha], -1), "rgba8", 12), ref)
    bgra = np.concatenate([rgb[..., ::-1], alpha], -1)
    assert torch.equal(preprocess_reference(bgra, "bgra8", 12), ref)
    mono = preprocess_reference(rgb[..., :1].copy(), "mono8", 12)
    assert torch.equal(mono[0], mono[1]) and torch.equal(mono[0], mono[2])
    assert torch.equal(mono[0], ref[0])


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_padded_rows_read_only_the_image(encoding):
    rng = np.random.default_rng(3)
    height, width = 21, 19
    channels = ENCODINGS[encoding].channels
    img = random_image(rng, height, width, encoding)
    step = width * channels + 13
    buf = np.full((height, step), 255, dtype=np.uint8)  # the padding is loud garbage
    buf[:, : width * channels] = img.reshape(height, -1)
    view = image_from_buffer(buf.tobytes(), height, width, step, encoding)
    assert view.strides[0] == step
    assert torch.equal(preprocess_reference(view, encoding, 10), preprocess_reference(img, encoding, 10))


def test_image_from_buffer_is_a_view_of_the_message_bytes():
    data = bytearray(range(2 * 3 * 3))
    view = image_from_buffer(data, 3, 2, 6, "rgb8")
    assert view.shape == (3, 2, 3) and view[2, 1, 2] == 17
    data[17] = 99
    assert view[2, 1, 2] == 99


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "args,message",
    [
        ((bytes(12), 2, 2, 6, "yuv422"), "unknown image encoding 'yuv422'"),
        ((bytes(12), 2, 2, 5, "rgb8"), "step 5 is shorter than one row"),
        ((bytes(11), 2, 2, 6, "rgb8"), "truncated image buffer: 11 bytes < step 6 x height 2"),
        ((b"", 0, 0, 0, "rgb8"), "empty image: 0x0"),
        ((bytes(15), 2, 2, 8, "bgra8"), "truncated image buffer: 15 bytes < step 8 x height 2 = 16"),
    ],
)
def test_bad_buffers_are_refused_clearly(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        image_from_buffer(*args)


@pytest.mark.parametrize(
    "image,encoding,message",
    [
        (np.zeros((4, 4, 3), np.uint8), "jpeg", "unknown image encoding"),
        (np.zeros((0, 0, 3), np.uint8), "rgb8", "empty image: 0x0"),
        (np.zeros((4, 4, 4), np.uint8), "rgb8", "must have shape (H, W, 3)"),
        (np.zeros((4, 4), np.uint8), "bgr8", "must have shape (H, W, 3)"),
        (np.zeros((4, 4, 3), np.float32), "rgb8", "must be uint8"),
        (np.zeros((4, 4, 3), np.uint8)[:, ::-1], "rgb8", "packed within a row"),
        (np.zeros((4, 4, 3), np.uint8)[::-1], "rgb8", "rows must be in memory order"),
        (bytes(48), "rgb8", "use image_from_buffer"),
    ],
)
def test_bad_images_are_refused_clearly(image, encoding, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        preprocess_reference(image, encoding, 8)
    with pytest.raises(ValueError, match=re.escape(message)):
        Preprocessor(8, 1)([image], [encoding], torch.empty(1, 3, 8, 8))


def test_preprocessor_refuses_wrong_counts_and_outputs():
    pre = Preprocessor(8, 2)
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="expected 2 images and encodings, got 1 and 1"):
        pre([img], ["rgb8"], torch.empty(2, 3, 8, 8))
    for out in (torch.empty(2, 3, 8, 9), torch.empty(2, 3, 8, 8, dtype=torch.float64),
                torch.empty(3, 2, 8, 8).transpose(0, 1)):
        with pytest.raises(ValueError, match=re.escape("out must be a contiguous float32 tensor of shape (2, 3, 8, 8)")):
            pre([img, img], ["rgb8", "rgb8"], out)
    with pytest.raises(ValueError, match="must be positive"):
        Preprocessor(0, 1)


# --------------------------------------------------------------------------- Preprocessor on CPU
def test_preprocessor_writes_every_camera_of_the_model_buffer():
    rng = np.random.default_rng(4)
    images = [random_image(rng, 48, 64, "rgb8"), random_image(rng, 31, 17, "mono8"),
              torch.from_numpy(random_image(rng, 24, 24, "bgra8"))]
    encodings = ["rgb8", "mono8", "bgra8"]
    pre = Preprocessor(16, 3, "cpu")
    assert pre.backend == "torch"
    out = torch.full((1, 3, 3, 16, 16), float("nan"))  # the model's [B, n_cam, 3, S, S] buffer
    cameras = out[0]
    assert pre(images, encodings, cameras) is cameras
    for i, (img, enc) in enumerate(zip(images, encodings)):
        assert torch.equal(out[0, i], preprocess_reference(img, enc, 16))


# --------------------------------------------------------------------------- finding the sources
# Where this installation's sources really are (found before any test patches the lookup).
INSTALLED_KERNELS = K.find_kernels_dir()


def _copy_sources(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in K.KERNEL_SOURCES:
        shutil.copy(INSTALLED_KERNELS / name, directory / name)
    return directory


def test_sources_found_in_the_documented_order(tmp_path, monkeypatch):
    monkeypatch.delenv(K.KERNELS_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "ament_index_python", None)  # not a colcon install
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)
    # without ament: the source checkout's kernels/ beside the package, else the pip-installed copy
    # (tests run against the colcon install, where only the latter layout exists)
    repo = Path(K.__file__).resolve().parents[2] / "kernels"
    packaged = Path(sys.prefix) / "share" / "flashrt_ros" / "kernels"
    assert K.kernel_search_path() == [repo, packaged]
    expected = [d for d in (repo, packaged) if K._has_sources(d)]
    if expected:
        assert K.find_kernels_dir() == expected[0]
    else:
        with pytest.raises(FileNotFoundError, match="not found; looked in"):
            K.find_kernels_dir()

    share = tmp_path / "share" / "flashrt_ros"
    _copy_sources(share / "kernels")
    ament = types.ModuleType("ament_index_python.packages")
    ament.get_package_share_directory = lambda name: str(share) if name == "flashrt_ros" else None
    monkeypatch.setitem(sys.modules, "ament_index_python", types.ModuleType("ament_index_python"))
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", ament)
    assert K.find_kernels_dir() == share / "kernels"  # ament before the repository

    env = _copy_sources(tmp_path / "env")
    monkeypatch.setenv(K.KERNELS_DIR_ENV, str(env))
    assert K.find_kernels_dir() == env  # the variable before everything
    monkeypatch.setenv(K.KERNELS_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="FLASHRT_KERNELS_DIR=.*nowhere does not contain"):
        K.find_kernels_dir()


def test_kernel_source_agrees_with_the_python_tables():
    source = K.kernel_source("preprocess.cu")
    assert "static_assert(sizeof(CamParams) == 24" in source and K.CAM_PARAMS_DTYPE.itemsize == 24
    cases = re.findall(r"case (\d): channels = (\d); r = (\d); g = (\d); b = (\d); break;\s*// (\w+)", source)
    default = re.search(r"default: channels = (\d); r = (\d); g = (\d); b = (\d); break; // (\w+)", source)
    table = {name: (int(code), int(c), (int(r), int(g), int(b))) for code, c, r, g, b, name in cases}
    table[default.group(5)] = (ENCODINGS[default.group(5)].code, int(default.group(1)),
                               tuple(int(default.group(i)) for i in (2, 3, 4)))
    assert table == {name: (e.code, e.channels, e.rgb) for name, e in ENCODINGS.items()}


# --------------------------------------------------------------------------- postprocess reference
JOINTS = dict(mean=[0.5, -1.0], std=[2.0, 0.5], limits=[[0.0, 1.0], [-2.0, 2.0]], max_velocity=[0.5, 10.0])


def _reference(actions, q0, dt=0.1, **joints):
    j = {**JOINTS, **joints}
    return postprocess_reference(torch.tensor(actions, dtype=torch.float32), torch.tensor(q0, dtype=torch.float32),
                                 j["mean"], j["std"], j["limits"], j["max_velocity"], dt)


def test_actions_are_unnormalised_then_clamped_to_the_joint_limits():
    pos, _, nonfinite = _reference([[0.0, 0.0], [1.0, -4.0], [-1.0, 8.0]], [0.5, -1.0])
    assert torch.equal(pos, torch.tensor([[0.5, -1.0], [1.0, -2.0], [0.0, 2.0]]))
    assert nonfinite.item() == 0


def test_velocities_are_central_differences_from_the_current_state_ending_at_rest():
    # joint 1 moves at 2 rad/s from q0 = -1: positions -0.8, -0.6, ...; joint 0 is still.
    dt, steps = 0.1, 5
    target = -1.0 + 2.0 * dt * np.arange(1, steps + 1)
    actions = np.stack([np.zeros(steps), (target + 1.0) / 0.5], 1)
    pos, vel, _ = _reference(actions, [0.5, -1.0], dt)
    np.testing.assert_allclose(pos[:, 1].numpy(), target, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vel[:, 1].numpy(), [2, 2, 2, 2, 0], rtol=0, atol=1e-5)
    assert torch.equal(vel[:, 0], torch.zeros(steps))
    # A turn: v_k = (p_{k+1} - p_{k-1}) / (2 dt), with p_{-1} = q0.
    pos, vel, _ = _reference([[0, 0], [0, 2], [0, 0]], [0.5, -1.0], dt)
    np.testing.assert_allclose(vel[:, 1].numpy(), [(0.0 - -1.0) / 0.2, 0.0, 0.0], atol=1e-5)


def test_velocities_are_clamped_to_the_joint_maximum():
    _, vel, _ = _reference([[0.25, 0], [0.5, 0], [0.25, 0]], [0.0, -1.0], 0.1)
    # joint 0 would move at (1.0 - 0.0) / 0.2 = 5 rad/s; its limit is 0.5.
    assert vel[0, 0].item() == 0.5 and vel[1, 0].item() == 0.0


def test_non_finite_actions_are_counted_and_never_leave_as_nan():
    nan, inf = float("nan"), float("inf")
    pos, vel, nonfinite = _reference([[nan, 0.0], [0.0, inf], [0.0, 0.0]], [0.7, -1.5])
    assert nonfinite.item() == 2
    assert torch.isfinite(pos).all() and torch.isfinite(vel).all()
    assert pos[0, 0].item() == pytest.approx(0.7) and pos[1, 1].item() == -1.5  # held at q0
    pos, vel, nonfinite = _reference([[0.0, 0.0]], [nan, 5.0])  # q0 unknown / out of limits
    assert nonfinite.item() == 1
    assert pos.tolist() == [[0.5, -1.0]] and vel.tolist() == [[0.0, 0.0]]
    pos, _, nonfinite = _reference([[nan, nan]], [nan, nan])
    assert nonfinite.item() == 4 and pos.tolist() == [[0.0, 0.0]]  # clamp(0, limits)


def test_postprocessor_on_cpu_returns_host_copies_and_reuses_its_buffers():
    post = Postprocessor(JOINTS["mean"], JOINTS["std"], JOINTS["limits"], JOINTS["max_velocity"], 0.1, 3)
    assert post.backend == "torch"
    actions = torch.tensor([[[0.1, 0.2], [float("nan"), 0.3], [0.4, 0.5]]])
    first = post(actions, np.array([0.5, -1.0]))
    ref = _reference(actions[0].tolist(), [0.5, -1.0])
    assert np.array_equal(first.positions, ref.positions.numpy())
    assert np.array_equal(first.velocities, ref.velocities.numpy())
    assert first.nonfinite == 1
    arrays = post.launch(torch.zeros(3, 2), [0.5, -1.0])
    assert post.launch(torch.ones(3, 2), [0.5, -1.0]).positions.data_ptr() == arrays.positions.data_ptr()
    assert first.positions[0, 0] == ref.positions[0, 0].item()  # the host copy did not change
    with pytest.raises(ValueError, match=re.escape("actions must have shape (3, 2)")):
        post(torch.zeros(4, 2), [0.0, 0.0])
    with pytest.raises(ValueError, match="q0 must have 2 entries"):
        post(torch.zeros(3, 2), [0.0])


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(std=[1.0]), "needs std [2]"),
        (dict(limits=[[1.0, 0.0], [0, 1]]), "lower <= upper"),
        (dict(max_velocity=[0.0, 1.0]), "max_velocity must be > 0"),
        (dict(mean=[float("nan"), 0.0]), "mean and std must be finite"),
        (dict(dt=0.0), "dt must be a positive"),
    ],
)
def test_postprocessor_refuses_bad_parameters(change, message):
    args = {**JOINTS, "dt": 0.1, "horizon": 3, **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        Postprocessor(**args)


def test_infinite_limits_mean_no_limit():
    post = Postprocessor([0, 0], [1, 1], [[-np.inf, np.inf]] * 2, [np.inf, np.inf], 0.1, 2)
    chunk = post(np.array([[1e6, -3.0], [2e6, 1.0]], np.float32), [0.0, 0.0])
    assert chunk.positions.tolist() == [[1e6, -3.0], [2e6, 1.0]] and chunk.nonfinite == 0
    assert chunk.velocities[0].tolist() == [pytest.approx(1e7), pytest.approx(5.0)]


# --------------------------------------------------------------------------- GPU: kernels vs references
def _gpu_preprocessor(size, n_cam):
    pre = Preprocessor(size, n_cam, "cuda")
    assert pre.backend == "cupy", "a GPU machine must run the fused kernel (is cupy installed?)"
    return pre


def _padded_cuda(img: np.ndarray, pad: int) -> torch.Tensor:
    h, w, c = img.shape
    buf = torch.full((h, w * c + pad), 7, dtype=torch.uint8, device="cuda")
    buf[:, : w * c] = torch.from_numpy(img.reshape(h, -1)).cuda()
    return buf[:, : w * c].view(h, w, c) if c > 1 else buf[:, :w]


@gpu
def test_gpu_preprocess_kernel_matches_the_reference():
    rng = np.random.default_rng()  # fresh inputs every run
    size = 24
    pre = _gpu_preprocessor(size, 5)
    stream = torch.cuda.Stream()
    worst = 0.0
    for trial in range(6):
        encodings = list(ENCODINGS)
        rng.shuffle(encodings)
        images, host_images = [], []
        for i, enc in enumerate(encodings):
            h, w = int(rng.integers(1, 700)), int(rng.integers(1, 700))
            img = random_image(rng, h, w, enc)
            host_images.append(img)
            kind = (i + trial) % 4
            if kind == 0:
                images.append(img)  # host, packed
            elif kind == 1:  # host, padded rows as a ROS message would carry them
                c = img.shape[2]
                buf = np.zeros((h, w * c + 5), np.uint8)
                buf[:, : w * c] = img.reshape(h, -1)
                images.append(image_from_buffer(buf.tobytes(), h, w, w * c + 5, enc))
            elif kind == 2:
                images.append(torch.from_numpy(img).cuda())  # device, packed
            else:
                images.append(_padded_cuda(img, 3))  # device, padded rows
        with torch.cuda.stream(stream):
            assert pre._lane.stream().ptr == stream.cuda_stream  # kernels go on torch's stream
            out = torch.full((5, 3, size, size), float("nan"), device="cuda")
            pre(images, encodings, out)
        stream.synchronize()
        got = out.cpu()
        assert torch.isfinite(got).all(), "every output element is written"
        for i, (img, enc) in enumerate(zip(host_images, encodings)):
            worst = max(worst, (got[i] - preprocess_reference(img, enc, size)).abs().max().item())
    assert worst <= TOL, worst


@gpu
def test_gpu_preprocess_reuses_its_staging_buffers():
    rng = np.random.default_rng()
    pre = _gpu_preprocessor(16, 2)
    out = torch.empty(2, 3, 16, 16, device="cuda")
    pre([random_image(rng, 480, 640, "rgb8"), random_image(rng, 240, 320, "bgr8")], ["rgb8", "bgr8"], out)
    staging = pre._staging_dev.data_ptr()
    for _ in range(3):
        imgs = [random_image(rng, 480, 640, "rgb8"), random_image(rng, 240, 320, "bgr8")]
        pre(imgs, ["rgb8", "bgr8"], out)
        assert pre._staging_dev.data_ptr() == staging
        torch.cuda.synchronize()
        for i, enc in enumerate(["rgb8", "bgr8"]):
            assert (out[i].cpu() - preprocess_reference(imgs[i], enc, 16)).abs().max() <= TOL


@gpu
def test_gpu_postprocess_kernel_matches_the_reference():
    rng = np.random.default_rng()
    for horizon, dim in [(50, 7), (1, 3), (37, 40), (200, 14)]:
        mean, std = rng.normal(size=dim), rng.uniform(0.1, 2.0, dim)
        lo = rng.uniform(-3, 0, dim)
        limits = np.stack([lo, lo + rng.uniform(0.5, 4, dim)], 1)
        limits[0] = [-np.inf, np.inf]
        vmax = rng.uniform(0.5, 5.0, dim)
        dt = float(rng.uniform(0.01, 0.1))
        post = Postprocessor(mean, std, limits, vmax, dt, horizon, "cuda")
        assert post.backend == "cupy"
        actions = torch.from_numpy(rng.normal(size=(horizon, dim)).astype(np.float32) * 2)
        flat = actions.view(-1)
        flat[torch.from_numpy(rng.choice(flat.numel(), size=min(3, flat.numel()), replace=False))] = float("nan")
        flat[0] = float("inf")
        q0 = rng.normal(size=dim).astype(np.float32)
        q0[-1] = np.nan if horizon == 37 else q0[-1]
        got = post(actions.cuda(), q0)
        ref = postprocess_reference(actions, torch.from_numpy(q0), mean, std, limits, vmax, dt)
        assert np.abs(got.positions - ref.positions.numpy()).max() <= 1e-6
        assert np.abs(got.velocities - ref.velocities.numpy()).max() <= 1e-6 * max(1.0, 1 / dt)
        assert got.nonfinite == ref.nonfinite.item() > 0
        assert np.isfinite(got.positions).all() and np.isfinite(got.velocities).all()
