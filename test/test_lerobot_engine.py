"""The LeRobot engine on the two tiny LeRobot-saved policies (π0, π0.5), no ROS: a chunk is the eager
reference (`policy.predict`) after unnormalisation and clamping; the same inputs and chunk_seq give
the same chunk; coaching reaches the very next chunk; limits hold; bad input and bad policy
directories are refused with a clear error; reset restores the start-up state."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flashrt_ros.engines.lerobot import LerobotEngine
from flashrt_ros.models.lerobot import PolicyDirError, load_policy

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = ("pi0", "pi05")
TASK = "pick up the red cube"
SEED = 7
D = 7
WIDE = np.array([[-100.0, 100.0]] * D, np.float32)        # never reached: nothing is clamped
WIDE_VMAX = np.full(D, 1e5, np.float32)
TIGHT = np.array([[-0.5 - 0.1 * j, 0.4 + 0.1 * j] for j in range(D)], np.float32)
TIGHT_VMAX = np.full(D, 0.8, np.float32)
Q = np.array([0.3, -0.2, 0.1, 0.0, 0.25, -0.35, 0.15], np.float32)   # inside TIGHT
ENCODINGS = ["rgb8", "rgb8"]


def policy_dir(kind: str) -> Path:
    return FIXTURES / f"lerobot_{kind}_tiny"


def frames(seed: int = 0) -> list[np.ndarray]:
    """Two camera frames of different sizes (the trained size and a smaller one): any size works."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)]


IMAGES = frames()


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def engine(kind):
    return LerobotEngine(checkpoint=policy_dir(kind), device="cpu", seed=SEED, joint_limits=WIDE,
                         max_velocity=WIDE_VMAX)


@pytest.fixture
def fresh(engine):
    """The engine as at the start of an episode with TASK set."""
    engine.reset()
    engine.set_task(TASK)
    return engine


@pytest.fixture(scope="module")
def baseline(engine):
    """The chunk for (IMAGES, Q, TASK, chunk_seq 3) right after start-up."""
    engine.reset()
    engine.set_task(TASK)
    return engine.act(IMAGES, ENCODINGS, Q, chunk_seq=3)


def reference_chunk(kind: str, task: str, images, q: np.ndarray, chunk_seq: int):
    """LeRobot's eager path, built from the policy's public transforms: images /255, the prompt
    (π0: task + newline; π0.5: task + discretised normalised state), tokens, the engine's noise."""
    policy = load_policy(policy_dir(kind), "cpu", "float32")
    state = torch.from_numpy(q)[None]
    if policy.kind == "pi05":
        prompt = policy.prompt(task, policy.normalize_state(state)[0].numpy())
    else:
        prompt = policy.prompt(task)
    ids, mask = policy.tokenize(prompt)
    generator = torch.Generator().manual_seed(SEED * 1_000_003 + chunk_seq)
    noise = torch.randn((1, policy.chunk_size, int(policy.config["max_action_dim"])), generator=generator)
    cams = [torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255.0 for im in images]
    actions = policy.predict(cams, state, torch.from_numpy(ids)[None], torch.from_numpy(mask)[None], noise)
    return actions[0].numpy()


def velocities_of(positions: np.ndarray, q0: np.ndarray, limits: np.ndarray, vmax: np.ndarray, dt: float):
    """Central differences, starting from the (clamped) joint state; the last action holds still."""
    previous = np.concatenate([np.clip(q0, limits[:, 0], limits[:, 1])[None], positions[:-1]])
    v = np.zeros_like(positions)
    v[:-1] = np.clip((positions[1:] - previous[:-1]) / (2 * dt), -vmax, vmax)
    return v


# --- equivalence with the eager reference -----------------------------------------------------------
def test_a_chunk_equals_the_eager_reference_after_unnormalisation_and_clamping(kind, fresh):
    chunk = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=5)
    expected = np.clip(reference_chunk(kind, TASK, IMAGES, Q, 5), WIDE[:, 0], WIDE[:, 1])
    H = fresh.config.horizon
    assert chunk.positions.shape == (H, D) == expected.shape and H == 50
    assert np.ptp(expected) > 1.0                     # a real chunk, not a constant
    np.testing.assert_allclose(chunk.positions, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunk.velocities, velocities_of(expected, Q, WIDE, WIDE_VMAX, chunk.dt),
                               rtol=0, atol=1e-3)
    assert (chunk.subtask_version, chunk.subtask_text, chunk.nonfinite) == (1, TASK, False)


def test_bgr8_and_rgb8_of_the_same_picture_give_the_same_chunk(fresh):
    rgb = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=4)
    bgr = fresh.act([im[..., ::-1].copy() for im in IMAGES], ["bgr8", "bgr8"], Q, chunk_seq=4)
    np.testing.assert_array_equal(bgr.positions, rgb.positions)


# --- determinism ------------------------------------------------------------------------------------
def test_same_inputs_and_chunk_seq_give_a_bit_identical_chunk_another_seq_another(fresh):
    first = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=11)
    again = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=11)
    other = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=12)
    np.testing.assert_array_equal(again.positions, first.positions)
    np.testing.assert_array_equal(again.velocities, first.velocities)
    assert np.abs(other.positions - first.positions).max() > 1e-2


# --- coaching ---------------------------------------------------------------------------------------
def test_coaching_replaces_the_subtask_before_the_next_chunk(fresh):
    before = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=6)
    coached = fresh.coach("open the top drawer")
    assert coached.version == before.subtask_version + 1 and coached.text == "open the top drawer"
    assert fresh.subtask.version == coached.version and fresh.subtask.text == coached.text
    after = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=6)      # same noise: only the prompt changed
    assert (after.subtask_version, after.subtask_text) == (coached.version, "open the top drawer")
    assert np.abs(after.positions - before.positions).max() > 1e-3
    assert fresh.task == TASK                                # coaching does not replace the task


def test_the_coached_chunk_equals_the_reference_for_the_coached_text(kind, fresh):
    fresh.coach("go to the blue bowl")
    chunk = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=8)
    np.testing.assert_allclose(chunk.positions, reference_chunk(kind, "go to the blue bowl", IMAGES, Q, 8),
                               rtol=0, atol=1e-5)


# --- limits -----------------------------------------------------------------------------------------
def test_chunks_stay_within_joint_and_velocity_limits(kind, fresh):
    tight = LerobotEngine(checkpoint=policy_dir(kind), device="cpu", seed=SEED, joint_limits=TIGHT,
                          max_velocity=TIGHT_VMAX)
    tight.set_task(TASK)
    chunk = tight.act(IMAGES, ENCODINGS, Q, chunk_seq=2)
    lo, hi = TIGHT[:, 0], TIGHT[:, 1]
    assert np.all(chunk.positions >= lo) and np.all(chunk.positions <= hi)
    assert np.all(np.abs(chunk.velocities) <= TIGHT_VMAX + 1e-6)
    # the limits were binding (the policy's chunk leaves them), and clamping is all that changed
    free = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=2).positions
    assert np.any(free < lo) and np.any(free > hi)
    np.testing.assert_allclose(chunk.positions, np.clip(free, lo, hi), rtol=0, atol=1e-6)
    assert np.any(np.isclose(np.abs(chunk.velocities), TIGHT_VMAX))


# --- bad input --------------------------------------------------------------------------------------
NAN_Q = Q.copy()
NAN_Q[2] = np.nan
BAD_INPUTS = {
    "nan joint state": (lambda e: e.act(IMAGES, ENCODINGS, NAN_Q, chunk_seq=3), "not finite"),
    "inf joint state": (lambda e: e.act(IMAGES, ENCODINGS, np.where(Q > 0.2, np.inf, Q), chunk_seq=3), "not finite"),
    "6 joints": (lambda e: e.act(IMAGES, ENCODINGS, Q[:6], chunk_seq=3), "joint state has 6 values"),
    "8 joints": (lambda e: e.act(IMAGES, ENCODINGS, np.append(Q, 0.0), chunk_seq=3), "joint state has 8 values"),
    "1 camera": (lambda e: e.act(IMAGES[:1], ENCODINGS[:1], Q, chunk_seq=3), "takes 2 camera image"),
    "3 cameras": (lambda e: e.act(IMAGES + IMAGES[:1], ENCODINGS * 2, Q, chunk_seq=3), "takes 2 camera image"),
    "encodings != images": (lambda e: e.act(IMAGES, ENCODINGS[:1], Q, chunk_seq=3), "2 images and 1 encodings"),
    "unknown encoding": (lambda e: e.act(IMAGES, ["rgb8", "yuv422"], Q, chunk_seq=3),
                         "unknown image encoding 'yuv422'"),
    "float image": (lambda e: e.act([IMAGES[0], IMAGES[1] / 255.0], ENCODINGS, Q, chunk_seq=3), "uint8"),
    "empty coaching": (lambda e: e.coach(""), "coaching text is empty"),
    "blank coaching": (lambda e: e.coach("  \n "), "coaching text is empty"),
    "oversized coaching": (lambda e: e.coach("go " * 400), "1024-byte"),
    "empty task": (lambda e: e.set_task(""), "task is empty"),
    "oversized task": (lambda e: e.set_task("pick " * 300), "1024-byte"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_error_and_the_engine_keeps_working(engine, baseline, case):
    call, why = BAD_INPUTS[case]
    engine.reset()
    engine.set_task(TASK)
    subtask = engine.subtask
    with pytest.raises(ValueError, match=why):
        call(engine)
    assert engine.subtask == subtask and engine.task == TASK
    chunk = engine.act(IMAGES, ENCODINGS, Q, chunk_seq=3)
    np.testing.assert_array_equal(chunk.positions, baseline.positions)
    assert (chunk.subtask_version, chunk.subtask_text) == (baseline.subtask_version, TASK)


# --- not a LeRobot policy directory -----------------------------------------------------------------
def _copy(tmp_path) -> Path:
    return Path(shutil.copytree(policy_dir("pi0"), tmp_path / "policy"))


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_weights(path: Path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def _truncate(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _reshape(tensors) -> None:
    tensors["model.action_in_proj.weight"] = tensors["model.action_in_proj.weight"][:-1].contiguous()


BAD_DIRS = [
    pytest.param(lambda p: (p / "config.json").unlink(), "no config.json", id="no config.json"),
    pytest.param(lambda p: _edit_config(p, type="act"), "policy type 'act' is not supported", id="type act"),
    pytest.param(lambda p: _edit_config(p, type=None), "policy type None is not supported", id="no type"),
    pytest.param(lambda p: (p / "model.safetensors").unlink(), "no model.safetensors", id="no weights"),
    pytest.param(lambda p: _edit_weights(p, lambda t: t.pop("model.action_out_proj.weight")),
                 r"missing \['action_out_proj.weight'\]", id="tensor removed"),
    pytest.param(lambda p: _edit_weights(p, _reshape),
                 r"action_in_proj.weight: checkpoint shape \(63, 32\), network expects \(64, 32\)",
                 id="tensor reshaped"),
    pytest.param(lambda p: _edit_weights(p, lambda t: t.update(extra=torch.zeros(3))),
                 r"unexpected \['extra'\]", id="extra tensor"),
    pytest.param(lambda p: _edit_config(p, type="pi05"), "does not fit this π0.5 network",
                 id="pi0 weights typed pi05"),
    pytest.param(lambda p: (p / "tokenizer.json").unlink(), "no tokenizer.json", id="no tokenizer"),
    pytest.param(_truncate, "model.safetensors", id="truncated weights"),
    pytest.param(lambda p: (p / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
                 "model.safetensors", id="corrupt weights"),
    pytest.param(lambda p: (p / "policy_preprocessor.json").unlink(), "no policy_preprocessor.json",
                 id="no preprocessor"),
    pytest.param(lambda p: (p / "config.json").write_text("{not json"), "config.json", id="config not json"),
]


@pytest.mark.parametrize("damage, why", BAD_DIRS)
def test_a_directory_that_is_not_a_runnable_lerobot_policy_is_refused_naming_the_problem(tmp_path, damage, why):
    path = _copy(tmp_path)
    damage(path)
    with pytest.raises(PolicyDirError, match=why):
        LerobotEngine(checkpoint=path, device="cpu")


def test_the_untouched_copy_loads(tmp_path):
    """The damage above is what fails, not the copying."""
    engine = LerobotEngine(checkpoint=_copy(tmp_path), device="cpu")
    assert (engine.config.n_cameras, engine.config.action_dim, engine.config.horizon) == (2, D, 50)


@pytest.mark.parametrize("checkpoint, why", [(None, "needs `checkpoint`"), ("", "needs `checkpoint`"),
                                             (FIXTURES / "lerobot_pi0_tiny" / "config.json", "not a directory"),
                                             (FIXTURES / "missing", "not a directory")])
def test_no_policy_directory_is_refused(checkpoint, why):
    with pytest.raises(PolicyDirError, match=why):
        LerobotEngine(checkpoint=checkpoint, device="cpu")


# --- reset ------------------------------------------------------------------------------------------
def test_reset_restores_the_start_up_state(fresh):
    graph = fresh.actor_graph
    first = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=9)
    fresh.coach("go home")
    coached = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=9)
    assert coached.subtask_version == first.subtask_version + 1
    fresh.reset()
    assert fresh.actor_graph is graph                                 # no recapture
    assert (fresh.subtask.version, fresh.subtask.text, fresh.task) == (0, "", "")
    fresh.set_task(TASK)
    again = fresh.act(IMAGES, ENCODINGS, Q, chunk_seq=9)
    np.testing.assert_array_equal(again.positions, first.positions)
    np.testing.assert_array_equal(again.velocities, first.velocities)
    assert (again.subtask_version, again.subtask_text) == (first.subtask_version, TASK)


@pytest.mark.parametrize("mode", ["MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10", "IDENTITY"])
def test_the_per_chunk_numpy_state_normalisation_is_torch_s_bit_for_bit(mode):
    """act() normalises the state with numpy (no torch dispatch per chunk); π0.5 writes the result into
    its prompt as bins, so it must be LeRobot's torch arithmetic exactly, a zero span included."""
    from flashrt_ros.models.lerobot.processing import Normalizer
    g = torch.Generator().manual_seed(1)
    lo, hi = torch.randn(7, generator=g), torch.randn(7, generator=g).abs() + 0.1
    hi[2] = 0.0
    lo[2] = 0.0    # a joint that never moved in the data: span 0 -> eps
    stats = {"mean": lo, "std": hi, "min": lo, "max": lo + hi, "q01": lo, "q99": lo + hi, "q10": lo, "q90": lo + hi}
    norm = Normalizer("observation.state", mode, stats)
    x = torch.randn(1000, 7, generator=g) * 3
    want = norm.normalize(x).numpy()
    got = np.stack([norm.normalize_np(row) for row in x.numpy()])
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))


# --- the prompt's token budget (prompt_tokens) ------------------------------------------------------
def test_pi05s_prompt_budget_is_below_lerobots_padding_and_gives_lerobots_chunk():
    # auto: room for the state and 48 tokens of task text, not LeRobot's 200 slots of mostly padding; the
    # padding is masked, so the chunk is LeRobot's (the reference tokenises to 200) and the 200-slot graph's
    trimmed = LerobotEngine(checkpoint=policy_dir("pi05"), device="cpu", seed=SEED, joint_limits=WIDE,
                            max_velocity=WIDE_VMAX)
    full = LerobotEngine(checkpoint=policy_dir("pi05"), device="cpu", seed=SEED, joint_limits=WIDE,
                         max_velocity=WIDE_VMAX, prompt_tokens=200)
    assert trimmed.prompt_tokens == 64 and full.prompt_tokens == trimmed.policy.max_length == 200
    assert trimmed.buffers["actor.prompt"].shape[-1] == 2 * 64
    chunks = []
    for e in (trimmed, full):
        e.set_task(TASK)
        chunks.append(e.act(IMAGES, ENCODINGS, Q, chunk_seq=5).positions)
    expected = reference_chunk("pi05", TASK, IMAGES, Q, 5)
    np.testing.assert_allclose(chunks[0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunks[0], chunks[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind_", KINDS)
def test_a_text_that_does_not_fit_the_prompt_budget_is_refused_and_the_subtask_is_kept(kind_):
    e = LerobotEngine(checkpoint=policy_dir(kind_), device="cpu", seed=SEED, joint_limits=WIDE,
                      max_velocity=WIDE_VMAX, prompt_tokens=24)
    e.set_task(TASK)
    before = e.act(IMAGES, ENCODINGS, Q, chunk_seq=2)
    long_text = " ".join(["pick up the red cube and then"] * 4)      # 28 words: over 24 tokens
    with pytest.raises(ValueError, match="prompt_tokens 24"):
        e.coach(long_text)
    with pytest.raises(ValueError, match="prompt_tokens 24"):
        e.set_task(long_text)
    assert (e.subtask.text, e.subtask.version) == (TASK, before.subtask_version)
    after = e.act(IMAGES, ENCODINGS, Q, chunk_seq=2)                   # still serving, the same chunk
    np.testing.assert_array_equal(after.positions, before.positions)
    e.coach("open the drawer")                                        # a text that fits is taken
    assert e.act(IMAGES, ENCODINGS, Q, chunk_seq=2).subtask_text == "open the drawer"


def test_a_prompt_budget_above_lerobots_or_too_small_for_any_prompt_stops_start_up():
    with pytest.raises(ValueError, match="tokenizer_max_length 200"):
        LerobotEngine(checkpoint=policy_dir("pi05"), device="cpu", prompt_tokens=201)
    with pytest.raises(ValueError, match="prompt_tokens 4"):      # π0.5: the state alone needs more
        LerobotEngine(checkpoint=policy_dir("pi05"), device="cpu", prompt_tokens=4)
    with pytest.raises(ValueError, match="integer >= 0"):
        LerobotEngine(checkpoint=policy_dir("pi0"), device="cpu", prompt_tokens=-1)
