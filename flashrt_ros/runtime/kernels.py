"""Camera-image preprocess and action-chunk postprocess: cupy kernels on GPU, torch on CPU.

Two steps at the edges of the model, each with one fast path and one reference:

- ``Preprocessor``: uint8 camera images of any size and encoding -> the model's float32
  ``[n_cam, 3, S, S]`` image input in [-1, 1], in one kernel launch for all cameras
  (``kernels/preprocess.cu``).
- ``Postprocessor``: normalised actions ``[H, D]`` -> joint positions and velocities, clamped to
  the joint limits, plus a count of non-finite values (``kernels/postprocess.cu``).

``preprocess_reference`` and ``postprocess_reference`` are the plain torch versions: the CPU
path, and the oracle that the kernels are tested against. The CUDA sources are compiled at run
time by cupy (NVRTC). On a GPU without cupy the references run on the GPU and a warning says
so once: the fast path is never silently replaced.

No ROS here: ``image_from_buffer`` takes the fields of a sensor_msgs/Image (data, height,
width, step, encoding) and returns a validated zero-copy view, so the host's conversion stays
one line. The classes are not thread-safe: one instance per caller.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

KERNELS_DIR_ENV = "FLASHRT_KERNELS_DIR"
KERNEL_SOURCES = ("preprocess.cu", "postprocess.cu")


@dataclass(frozen=True)
class Encoding:
    code: int  # the `encoding` value in preprocess.cu's CamParams
    channels: int  # bytes per pixel
    rgb: tuple[int, int, int]  # which byte of a pixel is R, G, B


ENCODINGS: dict[str, Encoding] = {
    "rgb8": Encoding(0, 3, (0, 1, 2)),
    "bgr8": Encoding(1, 3, (2, 1, 0)),
    "rgba8": Encoding(2, 4, (0, 1, 2)),
    "bgra8": Encoding(3, 4, (2, 1, 0)),
    "mono8": Encoding(4, 1, (0, 0, 0)),
}

# preprocess.cu's struct CamParams, byte for byte.
CAM_PARAMS_DTYPE = np.dtype(
    [("src", "<u8"), ("height", "<i4"), ("width", "<i4"), ("step", "<i4"), ("encoding", "<i4")]
)
assert CAM_PARAMS_DTYPE.itemsize == 24

_BLOCK = 256  # threads per block, as in the kernels' __launch_bounds__
_ALIGN = 256  # byte alignment of each camera's slot in the staging buffers
_CHUNK = 1 << 18  # host images go to the GPU in pieces of ~256 KiB: copying piece k+1 into
# pinned memory overlaps the DMA of piece k


# --------------------------------------------------------------------------- finding sources
def _has_sources(directory: Path) -> bool:
    return all((directory / name).is_file() for name in KERNEL_SOURCES)


def _ament_kernels_dir() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory("flashrt_ros")) / "kernels"
    except Exception:  # PackageNotFoundError and friends: not a colcon install
        return None


def kernel_search_path() -> list[Path]:
    """Where the CUDA sources are looked for, in order (FLASHRT_KERNELS_DIR aside)."""
    repo = Path(__file__).resolve().parents[2] / "kernels"
    packaged = Path(sys.prefix) / "share" / "flashrt_ros" / "kernels"  # setup.py's data_files
    candidates = [_ament_kernels_dir(), repo, packaged]
    return [c for c in candidates if c is not None]


def find_kernels_dir() -> Path:
    """The directory holding the .cu sources.

    Order: ``$FLASHRT_KERNELS_DIR``; the ament share directory (``share/flashrt_ros/kernels``,
    colcon installs); the repository's ``kernels/`` beside the package (source checkouts);
    ``<sys.prefix>/share/flashrt_ros/kernels`` (the copy a pip install puts there). A set variable that points
    at a directory without the sources is an error, not a reason to look elsewhere.
    """
    env = os.environ.get(KERNELS_DIR_ENV)
    if env:
        directory = Path(env)
        if not _has_sources(directory):
            raise FileNotFoundError(
                f"{KERNELS_DIR_ENV}={env} does not contain {', '.join(KERNEL_SOURCES)}"
            )
        return directory
    tried = kernel_search_path()
    for directory in tried:
        if _has_sources(directory):
            return directory
    raise FileNotFoundError(
        f"CUDA kernel sources ({', '.join(KERNEL_SOURCES)}) not found; looked in "
        f"{', '.join(str(t) for t in tried)}; set {KERNELS_DIR_ENV}"
    )


def kernel_source(name: str) -> str:
    return (find_kernels_dir() / name).read_text()


# --------------------------------------------------------------------------- cupy, lazily
_cupy_module = None
_cupy_error: str | None = None
_warned_no_cupy = False
_compiled: dict[tuple[str, str, int], object] = {}


def _cupy():
    """The cupy module, or None when it cannot be imported (the reason in _cupy_error)."""
    global _cupy_module, _cupy_error
    if _cupy_module is None and _cupy_error is None:
        try:
            import cupy

            _cupy_module = cupy
        except Exception as e:  # ImportError, or a CUDA mismatch raised at import
            _cupy_error = f"{type(e).__name__}: {e}"
    return _cupy_module


def _choose_backend(device: torch.device, what: str) -> str:
    global _warned_no_cupy
    if device.type != "cuda":
        return "torch"
    if _cupy() is not None:
        return "cupy"
    if not _warned_no_cupy:
        log.warning(
            "cupy is not available (%s): %s runs the torch reference on %s, not the fused "
            "CUDA kernel",
            _cupy_error,
            what,
            device,
        )
        _warned_no_cupy = True
    return "torch"


def _kernel(source: str, name: str, device_index: int):
    """Compile (once per process and device) and return the kernel ``name`` of ``source``."""
    key = (source, name, device_index)
    if key not in _compiled:
        cupy = _cupy()
        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=kernel_source(source), options=("--std=c++17",))
            _compiled[key] = module.get_function(name)  # compiles and loads now, not at launch
    return _compiled[key]


def _raw_stream_getter(device: torch.device):
    """torch.cuda.current_stream() builds a Stream object (~5 us a call); the raw getter that
    torch's own compiler uses returns the handle alone. Used only where it agrees with the
    public API, on a side stream, else None."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is None:
        return None
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        on_side = raw(device.index) == side.cuda_stream
    on_current = raw(device.index) == torch.cuda.current_stream(device).cuda_stream
    return raw if on_side and on_current else None


class _Lane:
    """What the fused kernels need of CUDA, through cupy's thin runtime calls.

    torch's current stream as a cupy stream (kernels order with the torch work around them),
    async copies between pinned host memory and the device, and one event saying when the
    pinned buffers that the last copies read may be written again.
    """

    def __init__(self, device: torch.device):
        cupy = _cupy()
        self.cupy, self.runtime, self.index, self.device = cupy, cupy.cuda.runtime, device.index, device
        self._streams: dict[int, object] = {}
        with cupy.cuda.Device(self.index):
            self._pinned_free = cupy.cuda.Event(block=False, disable_timing=True)
        self._pending = False
        self._raw_stream = _raw_stream_getter(device)

    def stream(self):
        if self._raw_stream is not None:
            ptr = self._raw_stream(self.index)
        else:
            ptr = torch.cuda.current_stream(self.device).cuda_stream
        stream = self._streams.get(ptr)
        if stream is None:
            with warnings.catch_warnings():  # cupy 14 deprecates it for Stream.from_external
                warnings.simplefilter("ignore", DeprecationWarning)
                stream = self.cupy.cuda.ExternalStream(ptr, self.index)
            self._streams[ptr] = stream
        return stream

    def on_device(self):
        """Launches go to the current device's context: switch only when another is current."""
        if self.runtime.getDevice() == self.index:
            return contextlib.nullcontext()
        return self.cupy.cuda.Device(self.index)

    def h2d(self, dst: int, src: int, n_bytes: int, stream) -> None:
        self.runtime.memcpyAsync(dst, src, n_bytes, self.runtime.memcpyHostToDevice, stream.ptr)

    def d2h(self, dst: int, src: int, n_bytes: int, stream) -> None:
        self.runtime.memcpyAsync(dst, src, n_bytes, self.runtime.memcpyDeviceToHost, stream.ptr)

    def wait_pinned(self) -> None:
        if self._pending:
            self._pinned_free.synchronize()
            self._pending = False

    def pinned_in_use(self, stream) -> None:
        self._pinned_free.record(stream)
        self._pending = True


class _DlpackView:
    """A zero-copy cupy view of a torch tensor, made again only when the tensor changes."""

    def __init__(self):
        self._key = None
        self._tensor = None
        self._view = None

    def __call__(self, tensor: torch.Tensor, lane: _Lane, stream):
        if tensor is self._tensor:
            return self._view
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key != self._key:
            with lane.on_device(), stream:
                self._view = lane.cupy.from_dlpack(tensor)
            self._key = key
        self._tensor = tensor  # keeps the memory alive as long as the view is cached
        return self._view


def _cuda_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# --------------------------------------------------------------------------- images
def encoding_info(encoding: str) -> Encoding:
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}"
        ) from None


def image_from_buffer(data, height: int, width: int, step: int, encoding: str) -> np.ndarray:
    """A zero-copy ``(height, width, channels)`` uint8 view of a raw image buffer.

    The arguments are a sensor_msgs/Image's fields; rows are ``step`` bytes apart (a ROS row
    may carry padding). Raises ValueError for an unknown encoding, an empty image, a step
    shorter than a row, or a buffer shorter than ``step * height``.
    """
    enc = encoding_info(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image: {width}x{height} (width x height)")
    row = width * enc.channels
    if step < row:
        raise ValueError(
            f"step {step} is shorter than one row: width {width} x {enc.channels} bytes "
            f"({encoding}) = {row}"
        )
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"image buffer must be uint8, got {data.dtype}")
        buf = data.reshape(-1)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * height:
        raise ValueError(
            f"truncated image buffer: {buf.size} bytes < step {step} x height {height} = "
            f"{step * height}"
        )
    return np.lib.stride_tricks.as_strided(
        buf, shape=(height, width, enc.channels), strides=(step, enc.channels, 1), writeable=False
    )


def image_layout(image, encoding: str) -> tuple[int, int, int, int]:
    """Validate one image against its encoding; returns (height, width, channels, step).

    ``image`` is a numpy array or torch tensor, uint8, shaped ``(H, W, C)`` (or ``(H, W)``
    for mono8), rows in memory order, pixels packed within a row; ``step`` is the row stride
    in bytes.
    """
    enc = encoding_info(encoding)
    if isinstance(image, np.ndarray):
        dtype_ok, shape, strides = image.dtype == np.uint8, image.shape, image.strides
    elif isinstance(image, torch.Tensor):
        dtype_ok, shape, strides = image.dtype == torch.uint8, tuple(image.shape), image.stride()
    else:
        raise ValueError(
            f"image must be a numpy array or torch tensor, got {type(image).__name__} "
            "(raw bytes: use image_from_buffer)"
        )
    if not dtype_ok:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if len(shape) == 2 and enc.channels == 1:
        shape, strides = (*shape, 1), (*strides, 1)
    if len(shape) != 3 or shape[2] != enc.channels:
        raise ValueError(
            f"{encoding} image must have shape (H, W, {enc.channels}), got {tuple(shape)}"
        )
    height, width, channels = shape
    if height == 0 or width == 0:
        raise ValueError(f"empty image: {width}x{height} (width x height)")
    # Size-1 dimensions may carry any stride; only the others say something about layout.
    if (channels > 1 and strides[2] != 1) or (width > 1 and strides[1] != channels):
        raise ValueError(
            f"{encoding} image pixels must be packed within a row (strides {tuple(strides)})"
        )
    step = strides[0] if height > 1 else width * channels
    if step < width * channels:
        raise ValueError(
            f"row stride {step} is shorter than one row ({width} x {channels} bytes); rows "
            "must be in memory order"
        )
    return height, width, channels, step


def preprocess_reference(image, encoding: str, size: int) -> torch.Tensor:
    """One camera image -> float32 ``[3, size, size]`` in [-1, 1], on the image's device.

    Bilinear resize exactly as ``F.interpolate(mode="bilinear", align_corners=False,
    antialias=False)`` of the image as float32, RGB channel order (bgr swapped, alpha dropped,
    mono replicated), then ``x / 255 * 2 - 1``. The CPU path and the kernels' oracle.
    """
    height, width, channels, _ = image_layout(image, encoding)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image))  # a packed, writable copy
    pixels = image.reshape(height, width, channels)
    rgb = pixels[..., list(ENCODINGS[encoding].rgb)]
    chw = rgb.permute(2, 0, 1).to(torch.float32)[None]
    resized = F.interpolate(
        chw, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )[0]
    return resized / 255 * 2 - 1


class Preprocessor:
    """Camera images -> the model's image input buffer, one fused launch for all cameras.

    ``Preprocessor(image_size, n_cam, device)``; ``pre(images, encodings, out)`` writes
    ``out`` (float32, contiguous, ``[n_cam, 3, S, S]`` or ``[1, n_cam, 3, S, S]``, on
    ``device``) and returns it. ``images[i]`` is a numpy array or torch tensor as
    ``image_layout`` describes (``image_from_buffer`` makes one from a ROS Image's fields);
    sizes and encodings may differ between cameras and between calls.

    GPU path (``backend == "cupy"``): host images are copied into one reused pinned buffer
    and sent to the GPU by async copies of ~256 KiB pieces (the copy into pinned memory of one
    piece overlaps the DMA of the last); CUDA tensors on ``device`` are read in place. The
    per-camera parameters are re-sent only when they change. Work is queued on torch's
    current stream; nothing is allocated while sizes repeat.
    """

    def __init__(self, image_size: int, n_cam: int, device="cpu"):
        if int(image_size) <= 0 or int(n_cam) <= 0:
            raise ValueError(f"image_size and n_cam must be positive, got {image_size}, {n_cam}")
        self.image_size = int(image_size)
        self.n_cam = int(n_cam)
        self.device = _cuda_device(device)
        self.backend = _choose_backend(self.device, "image preprocessing")
        if self.backend == "cupy":
            self._init_cupy()

    def _init_cupy(self) -> None:
        self._kernel = _kernel("preprocess.cu", "flashrt_preprocess", self.device.index)
        self._lane = _Lane(self.device)
        self._grid = (-(-self.image_size * self.image_size // _BLOCK), self.n_cam)
        self._size_arg = np.int32(self.image_size)
        n_bytes = self.n_cam * CAM_PARAMS_DTYPE.itemsize
        self._params_pinned = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=True)
        self._params_host = self._params_pinned.numpy().view(CAM_PARAMS_DTYPE)
        self._params_dev = torch.empty(n_bytes, dtype=torch.uint8, device=self.device)
        self._params_new = np.zeros(self.n_cam, CAM_PARAMS_DTYPE)
        self._params_sent = np.zeros(self.n_cam, CAM_PARAMS_DTYPE)  # zero src: never valid
        self._staging_bytes = 0
        self._staging_pinned = self._staging_dev = self._staging_host = None
        self._out_view = _DlpackView()
        self._params_view = _DlpackView()(self._params_dev, self._lane, self._lane.stream())

    def __call__(self, images: Sequence, encodings: Sequence[str], out: torch.Tensor) -> torch.Tensor:
        if len(images) != self.n_cam or len(encodings) != self.n_cam:
            raise ValueError(
                f"expected {self.n_cam} images and encodings, got {len(images)} and "
                f"{len(encodings)}"
            )
        self._check_out(out)
        layouts = [image_layout(img, enc) for img, enc in zip(images, encodings)]
        if self.backend == "cupy":
            self._run_cupy(images, encodings, layouts, out)
        else:
            planes = out.view(self.n_cam, 3, self.image_size, self.image_size)
            for i, (img, enc) in enumerate(zip(images, encodings)):
                if self.device.type == "cuda" and not (
                    isinstance(img, torch.Tensor) and img.device == self.device
                ):
                    img = torch.from_numpy(np.array(img)).to(self.device)
                planes[i].copy_(preprocess_reference(img, enc, self.image_size))
        return out

    def _check_out(self, out: torch.Tensor) -> None:
        shape = (self.n_cam, 3, self.image_size, self.image_size)
        ok = (
            isinstance(out, torch.Tensor)
            and out.dtype == torch.float32
            and out.device == self.device
            and out.is_contiguous()
            and tuple(out.shape[-4:]) == shape
            and out.numel() == math.prod(shape)
        )
        if not ok:
            got = (
                f"{out.dtype} {tuple(out.shape)} on {out.device}, contiguous={out.is_contiguous()}"
                if isinstance(out, torch.Tensor)
                else type(out).__name__
            )
            raise ValueError(
                f"out must be a contiguous float32 tensor of shape {shape} on {self.device}; "
                f"got {got}"
            )

    def _run_cupy(self, images, encodings, layouts, out) -> None:
        lane = self._lane
        stream = lane.stream()
        # Host images get slots in the staging buffers, packed (step = width * channels);
        # CUDA tensors are read where they are.
        slots, total = {}, 0
        for i, (img, (h, w, c, _)) in enumerate(zip(images, layouts)):
            if isinstance(img, torch.Tensor) and img.is_cuda:
                if img.device != self.device:
                    raise ValueError(f"image {i} is on {img.device}, the preprocessor on {self.device}")
                continue
            slots[i] = total
            total += -(-h * w * c // _ALIGN) * _ALIGN
        if slots:
            self._ensure_staging(total)
        params = self._params_new
        for i, (img, enc, (h, w, c, step)) in enumerate(zip(images, encodings, layouts)):
            if i in slots:
                src, step = self._staging_dev.data_ptr() + slots[i], w * c
            else:
                src = img.data_ptr()
            params[i] = (src, h, w, step, ENCODINGS[enc].code)
        params_changed = params.tobytes() != self._params_sent.tobytes()
        if slots or params_changed:
            lane.wait_pinned()  # the last copies may still read the pinned buffers
            for i, offset in slots.items():
                self._stage(images[i], layouts[i], offset, stream)
            if params_changed:
                self._params_host[:] = params
                lane.h2d(self._params_dev.data_ptr(), self._params_pinned.data_ptr(), params.nbytes, stream)
                self._params_sent[:] = params
            lane.pinned_in_use(stream)
        with lane.on_device():
            self._kernel(
                self._grid,
                (_BLOCK,),
                (self._params_view, self._size_arg, self._out_view(out, lane, stream)),
                stream=stream,
            )

    def _stage(self, image, layout, offset: int, stream) -> None:
        """Copy one host image into its pinned slot and on to the device, piece by piece."""
        h, w, c, _ = layout
        row = w * c
        host = (image.numpy() if isinstance(image, torch.Tensor) else image).reshape(h, row)
        pinned = self._staging_host[offset : offset + h * row].reshape(h, row)
        dst, src = self._staging_dev.data_ptr() + offset, self._staging_pinned.data_ptr() + offset
        rows = max(1, _CHUNK // row)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            np.copyto(pinned[r0:r1], host[r0:r1])
            self._lane.h2d(dst + r0 * row, src + r0 * row, (r1 - r0) * row, stream)

    def _ensure_staging(self, n_bytes: int) -> None:
        if n_bytes <= self._staging_bytes:
            return
        # Grow only, so the host path allocates again only when a larger image set arrives;
        # the old buffers may still be read, and growing is rare: wait for them.
        self._lane.wait_pinned()
        torch.cuda.current_stream(self.device).synchronize()
        self._staging_pinned = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=True)
        self._staging_host = self._staging_pinned.numpy()
        self._staging_dev = torch.empty(n_bytes, dtype=torch.uint8, device=self.device)
        self._staging_bytes = n_bytes


# --------------------------------------------------------------------------- actions
class ChunkArrays(NamedTuple):
    positions: torch.Tensor  # float32 [H, D], finite, within the joint limits
    velocities: torch.Tensor  # float32 [H, D], finite, within +-max_velocity
    nonfinite: torch.Tensor  # int32 [1]: non-finite values seen (see postprocess_reference)


class HostChunk(NamedTuple):
    positions: np.ndarray  # float32 [H, D], the caller's own copy
    velocities: np.ndarray  # float32 [H, D]
    nonfinite: int  # publish the chunk only when this is 0


def _vector(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def postprocess_reference(actions, q0, mean, std, limits, max_velocity, dt: float) -> ChunkArrays:
    """Normalised actions ``[H, D]`` -> positions, velocities and the non-finite count.

    ``limits`` is ``[D, 2]`` (lower, upper; +-inf for none). The rules (kernels/postprocess.cu
    says why):
      x_k = a_k * std + mean; p_k = clamp(x_k, lower, upper), or, when x_k is not finite, the
      hold position h = clamp(q0, lower, upper) (clamp(0, lower, upper) where q0 is not
      finite). With p_{-1} = h, action k at time (k + 1) * dt after q0:
      v_k = clamp((p_{k+1} - p_{k-1}) / (2 dt), -max_velocity, max_velocity) (0 where that
      quotient is not finite), and v_{H-1} = 0.
      nonfinite = #(x not finite) + #(q0 not finite) + #(quotient not finite).
    """
    a = torch.as_tensor(actions, dtype=torch.float32)
    device = a.device

    def vec(x):
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    q0, mean, std, limits, vmax = map(vec, (q0, mean, std, limits, max_velocity))
    lo, hi = limits[:, 0], limits[:, 1]
    x = a * std + mean
    bad = ~torch.isfinite(x)
    q0_ok = torch.isfinite(q0)
    hold = torch.clamp(torch.where(q0_ok, q0, torch.zeros_like(q0)), lo, hi)
    positions = torch.where(bad, hold.expand_as(x), torch.clamp(x, lo, hi))
    previous = torch.cat([hold[None], positions[:-1]])
    two_dt = torch.full((1,), 2 * dt, dtype=torch.float32, device=device)  # a true division
    quotient = (positions[1:] - previous[:-1]) / two_dt
    v_ok = torch.isfinite(quotient)
    velocities = torch.zeros_like(positions)
    velocities[:-1] = torch.where(v_ok, torch.clamp(quotient, -vmax, vmax), torch.zeros_like(quotient))
    nonfinite = (bad.sum() + (~q0_ok).sum() + (~v_ok).sum()).to(torch.int32).reshape(1)
    return ChunkArrays(positions, velocities, nonfinite)


class Postprocessor:
    """Normalised action chunk -> joint positions, velocities and a non-finite count.

    ``Postprocessor(mean, std, limits, max_velocity, dt, horizon, device)``: per-joint
    ``mean``, ``std``, ``max_velocity`` ``[D]`` and ``limits`` ``[D, 2]`` (numpy or tensors;
    +-inf limits and velocity for none), ``dt`` seconds between actions.

    - ``post(actions, q0) -> HostChunk``: runs and brings the result to the host (one D2H copy
      into pinned memory, then a wait for it); ``actions`` float32 ``[H, D]`` or ``[1, H, D]``
      (a contiguous tensor on ``device`` on the GPU path), ``q0`` the joint state the chunk was
      computed from (numpy or tensor, ``[D]``).
    - ``post.launch(actions, q0) -> ChunkArrays``: the same, left on the device (static
      buffers, overwritten by the next call; nothing waits).
    Work is queued on torch's current stream.
    """

    def __init__(self, mean, std, limits, max_velocity, dt: float, horizon: int, device="cpu"):
        mean, std, limits, vmax = map(_vector, (mean, std, limits, max_velocity))
        mean, std, vmax = mean.reshape(-1), std.reshape(-1), vmax.reshape(-1)
        dim = mean.size
        if dim == 0 or int(horizon) <= 0:
            raise ValueError(f"need at least one joint and one action, got {dim} joints, horizon {horizon}")
        if std.shape != (dim,) or vmax.shape != (dim,) or limits.shape != (dim, 2):
            raise ValueError(
                f"mean [{dim}] needs std [{dim}], max_velocity [{dim}], limits [{dim}, 2]; got "
                f"{std.shape}, {vmax.shape}, {limits.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
            raise ValueError("action mean and std must be finite, std >= 0")
        lo, hi = limits[:, 0], limits[:, 1]
        if np.any(np.isnan(limits)) or np.any(lo > hi) or np.any(lo == np.inf) or np.any(hi == -np.inf):
            raise ValueError(f"joint limits need lower <= upper, not NaN, a finite point between; got {limits.tolist()}")
        if np.any(np.isnan(vmax)) or np.any(vmax <= 0):
            raise ValueError(f"max_velocity must be > 0 (inf for none), got {vmax.tolist()}")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number of seconds, got {dt}")
        self.horizon, self.dim, self.dt = int(horizon), dim, float(dt)
        self.device = _cuda_device(device)
        self.backend = _choose_backend(self.device, "action postprocessing")
        joint = np.stack([mean, std, lo, hi, vmax])  # the kernel's [5, D] rows
        self._joint = torch.tensor(joint, dtype=torch.float32, device=self.device)
        hd = self.horizon * dim
        # [positions | velocities | nonfinite (int32 bits)]: one buffer, one copy to the host.
        self._out = torch.empty(2 * hd + 1, dtype=torch.float32, device=self.device)
        self._arrays = ChunkArrays(
            self._out[:hd].view(self.horizon, dim),
            self._out[hd : 2 * hd].view(self.horizon, dim),
            self._out[2 * hd :].view(torch.int32),
        )
        if self.device.type == "cuda":
            self._out_pinned = torch.empty(self._out.numel(), dtype=torch.float32, pin_memory=True)
        if self.backend == "cupy":
            self._init_cupy()

    def _init_cupy(self) -> None:
        self._kernel = _kernel("postprocess.cu", "flashrt_postprocess", self.device.index)
        self._lane = lane = _Lane(self.device)
        self._q0_pinned = torch.empty(self.dim, dtype=torch.float32, pin_memory=True)
        self._q0_dev = torch.empty(self.dim, dtype=torch.float32, device=self.device)
        self._actions_view, self._q0_view = _DlpackView(), _DlpackView()
        stream = lane.stream()
        self._static_args = (
            _DlpackView()(self._joint, lane, stream),
            np.int32(self.horizon),
            np.int32(self.dim),
            np.float32(self.dt),
            _DlpackView()(self._out, lane, stream),
        )

    def __call__(self, actions, q0) -> HostChunk:
        self.launch(actions, q0)
        if self.backend == "cupy":
            lane = self._lane
            stream = lane.stream()
            lane.d2h(self._out_pinned.data_ptr(), self._out.data_ptr(), self._out.numel() * 4, stream)
            lane.pinned_in_use(stream)
            lane.wait_pinned()
        elif self.device.type == "cuda":
            self._out_pinned.copy_(self._out, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
        return self.host_result()

    def launch_to_host(self, actions, q0) -> None:
        """launch(), then queue the copy of its result into pinned host memory; nothing waits, so it can
        be captured into a CUDA graph with the network that writes `actions` (q0 then a device tensor:
        a buffer written before each replay). host_result() reads the copy once the stream is synchronised."""
        self.launch(actions, q0)
        self.d2h(self._out_pinned if self.device.type == "cuda" else None, self._out)

    def d2h(self, dst: torch.Tensor | None, src: torch.Tensor) -> None:
        """Queue a device -> pinned host copy on the current stream (capturable: a raw async copy through
        cupy's runtime, no allocator bookkeeping). On the CPU (dst None) there is nothing to copy."""
        if dst is None:
            return
        if self.backend == "cupy":
            lane = self._lane
            lane.d2h(dst.data_ptr(), src.data_ptr(), src.numel() * src.element_size(), lane.stream())
        else:
            dst.copy_(src, non_blocking=True)

    def host_result(self) -> HostChunk:
        """The last result as host arrays (after launch_to_host and a synchronisation of its stream)."""
        host = self._out_pinned.numpy() if self.device.type == "cuda" else self._out.numpy()
        hd = self.horizon * self.dim
        return HostChunk(
            host[:hd].reshape(self.horizon, self.dim).copy(),
            host[hd : 2 * hd].reshape(self.horizon, self.dim).copy(),
            int(host[2 * hd :].view(np.int32)[0]),
        )

    def launch(self, actions, q0) -> ChunkArrays:
        actions = self._check_actions(actions)
        if self.backend != "cupy":
            if not (isinstance(q0, torch.Tensor) and q0.device == self.device):
                q0 = torch.as_tensor(_vector(q0), dtype=torch.float32)
            q0 = q0.reshape(-1)
            self._check_q0(q0)
            ref = postprocess_reference(actions, q0.to(self.device), self._joint[0], self._joint[1],
                                        self._joint[2:4].T, self._joint[4], self.dt)
            for dst, src in zip(self._arrays, ref):
                dst.copy_(src)
            return self._arrays
        lane = self._lane
        stream = lane.stream()
        q0_dev = self._q0_on_device(q0, stream)
        joint, horizon, dim, dt, out = self._static_args
        with lane.on_device():
            self._kernel(
                (1,),
                (_BLOCK,),
                (self._actions_view(actions, lane, stream), self._q0_view(q0_dev, lane, stream),
                 joint, horizon, dim, dt, out),
                stream=stream,
            )
        return self._arrays

    def _check_actions(self, actions) -> torch.Tensor:
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        shape = (self.horizon, self.dim)
        if tuple(actions.shape[-2:]) != shape or actions.numel() != self.horizon * self.dim:
            raise ValueError(f"actions must have shape {shape} (or (1, *{shape})), got {tuple(actions.shape)}")
        if self.backend == "cupy":
            if actions.device != self.device or actions.dtype != torch.float32 or not actions.is_contiguous():
                raise ValueError(
                    f"actions must be a contiguous float32 tensor on {self.device}, got "
                    f"{actions.dtype} on {actions.device}"
                )
            return actions.view(shape)
        return actions.to(device=self.device, dtype=torch.float32).reshape(shape)

    def _check_q0(self, q0) -> None:
        if tuple(q0.shape) != (self.dim,):
            raise ValueError(f"q0 must have {self.dim} entries, got shape {tuple(q0.shape)}")

    def _q0_on_device(self, q0, stream) -> torch.Tensor:
        if isinstance(q0, torch.Tensor) and q0.is_cuda:
            if q0.device != self.device or q0.dtype != torch.float32 or not q0.is_contiguous():
                raise ValueError(f"q0 must be a contiguous float32 tensor on {self.device}")
            q0 = q0.reshape(-1)
            self._check_q0(q0)
            return q0
        host = _vector(q0).astype(np.float32).reshape(-1)
        self._check_q0(host)
        self._lane.wait_pinned()  # the last copy may still read the pinned buffer
        self._q0_pinned.numpy()[:] = host
        self._lane.h2d(self._q0_dev.data_ptr(), self._q0_pinned.data_ptr(), host.nbytes, stream)
        self._lane.pinned_in_use(stream)
        return self._q0_dev
