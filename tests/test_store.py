"""Trajectory store: round trips, lazy reads, reuse rules, corruption and the MTT import path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from distillkit.errors import StoreError
from distillkit.experts import quantise
from distillkit.experts import store as store_module
from distillkit.experts.convert import convert_store
from distillkit.experts.replay import import_replay_buffers
from distillkit.experts.store import MANIFEST, TrajectoryStore, expert_filename

LAYOUT = [["conv.weight", [4, 1, 3, 3]], ["conv.bias", [4]], ["fc.weight", [2, 100]]]
P = 36 + 4 + 200
EPOCHS = 4


def make_key(**overrides: object) -> dict:
    key = {
        "dataset": "digits",
        "image_shape": (1, 8, 8),
        "num_classes": 10,
        "preprocessing": {"mean": [0.5], "std": [0.25], "zca": False},
        "model": "convnet",
        "param_layout": LAYOUT,
        "num_params": P,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0},
        "epochs": EPOCHS,
        "seed": 0,
        "plugins": {},
    }
    key.update(overrides)
    return key


def random_trajectory(seed: int, params: int = P) -> torch.Tensor:
    return torch.randn(EPOCHS + 1, params, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def two_experts(tmp_path: Path) -> tuple[Path, list[torch.Tensor]]:
    root = tmp_path / "store"
    store = TrajectoryStore.create_or_open(root, make_key())
    trajectories = [random_trajectory(0), random_trajectory(1)]
    for i, trajectory in enumerate(trajectories):
        store.write_expert(i, trajectory, {"test_acc": [0.1, 0.5], "seconds": 1.5})
    return root, trajectories


def test_round_trip_full_and_partial(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, trajectories = two_experts
    store = TrajectoryStore.open(root)
    assert store.finished() == [0, 1]
    assert store.num_epochs(1) == EPOCHS
    for i, original in enumerate(trajectories):
        full = store.load(i)
        assert full.dtype == torch.float32
        assert torch.equal(full, original)
        assert torch.equal(store.load(i, epochs=[1, 3]), original[[1, 3]])
        assert torch.equal(store.load(i, epochs=[3, 1, 2]), original[[3, 1, 2]])
        assert store.load(i, epochs=[]).shape == (0, P)


def test_manifest_contents(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["format_version"] == 1
    assert manifest["key"]["image_shape"] == [1, 8, 8]
    entry = manifest["experts"][1]
    assert entry["index"] == 1
    assert entry["file"] == "expert_001.safetensors"
    assert entry["epochs"] == EPOCHS
    assert entry["dtype"] == "float32"
    assert entry["test_acc"] == [0.1, 0.5]
    assert entry["seconds"] == 1.5
    assert len(entry["sha256"]) == 64


def test_epoch_out_of_range(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    with pytest.raises(StoreError, match="epoch 9 was requested"):
        TrajectoryStore.open(root).load(0, epochs=[0, 9])


def test_unknown_expert(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    with pytest.raises(StoreError, match="no expert 7"):
        TrajectoryStore.open(root).load(7)


class _RecordingSlice:
    """Wraps a safetensors slice and records which row ranges were read."""

    def __init__(self, inner, reads: list[tuple[int, int]]) -> None:
        self._inner, self._reads = inner, reads

    def get_shape(self):
        return self._inner.get_shape()

    def __getitem__(self, item: slice):
        self._reads.append((item.start, item.stop))
        return self._inner[item]


class _RecordingOpen:
    """Stands in for ``safe_open``: hands out recording slices and forbids whole-tensor reads."""

    def __init__(self, inner, reads: list[tuple[int, int]]) -> None:
        self._inner, self._reads = inner, reads

    def __enter__(self) -> _RecordingOpen:
        self._handle = self._inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)

    def get_slice(self, name: str) -> _RecordingSlice:
        return _RecordingSlice(self._handle.get_slice(name), self._reads)

    def get_tensor(self, name: str) -> torch.Tensor:
        raise AssertionError("a partial load must not read the whole tensor")


def test_partial_load_reads_only_requested_rows(
    two_experts: tuple[Path, list[torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, trajectories = two_experts
    reads: list[tuple[int, int]] = []
    real_open = store_module.safe_open
    monkeypatch.setattr(store_module, "safe_open", lambda *a, **k: _RecordingOpen(real_open(*a, **k), reads))
    rows = TrajectoryStore.open(root).load(0, epochs=[1, 2, 4])
    assert reads == [(1, 3), (4, 5)]
    assert rows.shape == (3, P)
    assert torch.equal(rows, trajectories[0][[1, 2, 4]])


def test_half_precision_store(tmp_path: Path) -> None:
    params = 4000
    key32 = make_key(param_layout=[["w", [params]]], num_params=params)
    key16 = make_key(param_layout=[["w", [params]]], num_params=params, store_dtype="float16")
    trajectory = random_trajectory(3, params)
    s32 = TrajectoryStore.create_or_open(tmp_path / "fp32", key32)
    s16 = TrajectoryStore.create_or_open(tmp_path / "fp16", key16)
    s32.write_expert(0, trajectory, {})
    s16.write_expert(0, trajectory, {})
    loaded = TrajectoryStore.open(tmp_path / "fp16").load(0, epochs=[0, 2])
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, trajectory[[0, 2]], rtol=1e-3, atol=1e-3)
    size32 = (tmp_path / "fp32" / expert_filename(0)).stat().st_size
    size16 = (tmp_path / "fp16" / expert_filename(0)).stat().st_size
    assert 0.45 < size16 / size32 < 0.55
    assert s16.manifest.experts[0]["dtype"] == "float16"


def test_reuse_with_same_key_keeps_experts(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, trajectories = two_experts
    store = TrajectoryStore.create_or_open(root, make_key())
    assert store.finished() == [0, 1]
    assert torch.equal(store.load(1), trajectories[1])


def test_different_key_names_first_differing_field(
    two_experts: tuple[Path, list[torch.Tensor]],
) -> None:
    root, _ = two_experts
    with pytest.raises(StoreError, match=r"optimizer\.lr is 0\.01 there but 0\.02 now"):
        TrajectoryStore.create_or_open(root, make_key(optimizer={"name": "sgd", "lr": 0.02, "momentum": 0.0}))
    with pytest.raises(StoreError, match="extra is missing there but 1 now"):
        TrajectoryStore.create_or_open(root, {**make_key(), "extra": 1})
    # The manifest is untouched by the refusal.
    assert TrajectoryStore.open(root).finished() == [0, 1]


def test_non_store_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a trajectory store"):
        TrajectoryStore.create_or_open(tmp_path, make_key())


def test_corrupt_byte_is_detected(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    path = root / expert_filename(1)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    store = TrajectoryStore.open(root)
    assert torch.isfinite(store.load(0)).all()
    with pytest.raises(StoreError, match=r"expert_001\.safetensors: checksum mismatch"):
        store.load(1, epochs=[0])


def test_truncated_file_is_detected(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    path = root / expert_filename(0)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StoreError, match=r"expert_000\.safetensors: checksum mismatch"):
        TrajectoryStore.open(root).load(0)


def test_deleted_file_is_not_finished(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    (root / expert_filename(0)).unlink()
    store = TrajectoryStore.open(root)
    assert store.finished() == [1]
    with pytest.raises(StoreError, match="missing"):
        store.load(0)


def test_missing_or_invalid_manifest(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"manifest\.json is missing"):
        TrajectoryStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest\.json cannot be read"):
        TrajectoryStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 2, "key": {}, "experts": []}))
    with pytest.raises(StoreError, match="format_version 2"):
        TrajectoryStore.open(tmp_path)


def test_write_checks_shape_against_key(tmp_path: Path) -> None:
    store = TrajectoryStore.create_or_open(tmp_path / "s", make_key())
    with pytest.raises(StoreError, match=r"expert_000\.safetensors: the trajectory has 7 parameters"):
        store.write_expert(0, torch.zeros(EPOCHS + 1, 7), {})
    with pytest.raises(StoreError, match="3 snapshots"):
        store.write_expert(0, torch.zeros(3, P), {})
    assert store.finished() == []


def test_stored_trajectory_does_not_alias_caller_tensor(tmp_path: Path) -> None:
    """Regression for the CPU ``.cpu()`` aliasing bug (MTT's buffer.py appends ``p.detach().cpu()``)."""
    store = TrajectoryStore.create_or_open(tmp_path / "s", make_key())
    trajectory = random_trajectory(5)
    expected = trajectory.clone()
    store.write_expert(0, trajectory, {})
    trajectory.add_(1.0)  # as an optimizer step would
    assert torch.equal(store.load(0), expected)


def test_check_compatible(two_experts: tuple[Path, list[torch.Tensor]]) -> None:
    root, _ = two_experts
    store = TrajectoryStore.open(root)
    store.check_compatible({"dataset": "digits", "image_shape": [1, 8, 8], "num_params": P})
    store.check_compatible({"dataset": "digits", "seed": 99})  # seed is not a compatibility field
    with pytest.raises(StoreError, match='trained on "digits" but the run uses "fashion-mnist"'):
        store.check_compatible({"dataset": "fashion-mnist"})
    with pytest.raises(StoreError, match=r"image_shape\[1\] is 8 in the store but 28 in the run"):
        store.check_compatible({"image_shape": (1, 28, 28)})
    bad_layout = [LAYOUT[0], ["conv.bias", [8]], LAYOUT[2]]
    with pytest.raises(StoreError, match=r"param_layout\[1\]\[1\]\[0\] is 4"):
        store.check_compatible({"param_layout": bad_layout})


def _mtt_trajectory(seed: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(*shape, generator=generator) for _, shape in LAYOUT] for _ in range(EPOCHS + 1)]


def test_import_replay_buffers(tmp_path: Path) -> None:
    buffers = [[_mtt_trajectory(0), _mtt_trajectory(1)], [_mtt_trajectory(2)]]
    files = []
    for n, buffer in enumerate(buffers):
        files.append(tmp_path / f"replay_buffer_{n}.pt")
        torch.save(buffer, files[-1])
    store = import_replay_buffers(files, tmp_path / "store", make_key()).store
    assert store.finished() == [0, 1, 2]
    flat = [trajectory for buffer in buffers for trajectory in buffer]
    for index, trajectory in enumerate(flat):
        expected = torch.stack([torch.cat([t.reshape(-1) for t in snap]) for snap in trajectory])
        assert torch.equal(store.load(index), expected)
    assert store.manifest.experts[2]["source"] == "mtt:replay_buffer_1.pt[0]"
    # Importing again into the same store keeps (and does not rewrite) the experts.
    again = import_replay_buffers(files, tmp_path / "store", make_key()).store
    assert again.manifest.experts == store.manifest.experts


def test_import_rejects_wrong_layout_and_non_buffers(tmp_path: Path) -> None:
    bad = tmp_path / "replay_buffer_0.pt"
    trajectory = _mtt_trajectory(0)
    trajectory[2][1] = torch.zeros(5)
    torch.save([trajectory], bad)
    with pytest.raises(StoreError, match=r"snapshot 2 does not fit the store layout: param_layout\[1\]"):
        import_replay_buffers([bad], tmp_path / "s1", make_key())
    not_a_buffer = tmp_path / "replay_buffer_1.pt"
    torch.save({"a": torch.zeros(1)}, not_a_buffer)
    with pytest.raises(
        StoreError, match=r"is not a replay buffer: it holds a dict of 1 named tensor \(a state_dict\)"
    ):
        import_replay_buffers([not_a_buffer], tmp_path / "s2", make_key())
    garbage = tmp_path / "replay_buffer_2.pt"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(StoreError, match="cannot be read as a replay buffer"):
        import_replay_buffers([garbage], tmp_path / "s3", make_key())


# -- int8 residual store ------------------------------------------------------------------


def random_walk(rows: int, params: int = P, step: float = 1e-3, seed: int = 0) -> torch.Tensor:
    """A trajectory like an expert's: large weights that move a little each epoch."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(1, params, generator=generator)
    steps = step * torch.randn(rows - 1, params, generator=generator)
    return torch.cat([start, start + steps.cumsum(0)])


def stored_scales(path: Path) -> torch.Tensor:
    with safe_open(path, framework="pt") as handle:
        return handle.get_tensor(quantise.SCALES)


def per_element_scale(scales: torch.Tensor) -> torch.Tensor:
    sizes = torch.tensor([math.prod(shape) for _, shape in LAYOUT])
    return scales.repeat_interleave(sizes, dim=1)


def test_int8_round_trip_within_half_scale_without_drift(tmp_path: Path) -> None:
    rows = 200
    trajectory = random_walk(rows)
    store = TrajectoryStore.create_or_open(tmp_path / "s", make_key(store_dtype="int8", epochs=rows - 1))
    store.write_expert(0, trajectory, {})
    loaded = TrajectoryStore.open(tmp_path / "s").load(0)
    assert loaded.dtype == torch.float32 and loaded.shape == trajectory.shape
    bound = per_element_scale(stored_scales(tmp_path / "s" / expert_filename(0))) / 2
    error = (loaded - trajectory).abs()
    rounding = torch.finfo(torch.float32).eps * trajectory.abs()
    assert (error <= bound + rounding).all()
    # Closed loop: once row 1 has absorbed row 0's error, every scale follows the step size,
    # so row 199 is as accurate as row 2; an open-loop coder would sum 199 rounding errors.
    max_step = (trajectory[1:] - trajectory[:-1]).abs().max()
    assert error[2:].max() <= max_step / 127


def test_int8_loads_are_bit_identical_and_read_a_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trajectory = random_walk(EPOCHS + 1, step=0.05, seed=2)
    root = tmp_path / "s"
    TrajectoryStore.create_or_open(root, make_key(store_dtype="int8")).write_expert(0, trajectory, {})
    full = TrajectoryStore.open(root).load(0)
    with safe_open(root / expert_filename(0), framework="pt") as handle:
        codes, scales = handle.get_tensor(quantise.CODES), handle.get_tensor(quantise.SCALES)
    assert codes.dtype == torch.int8 and codes.shape == (EPOCHS + 1, P)
    assert scales.shape == (EPOCHS + 1, len(LAYOUT))
    sizes = [math.prod(shape) for _, shape in LAYOUT]
    assert torch.equal(full, quantise.decode(codes, scales, sizes))
    reads: list[tuple[int, int]] = []
    real_open = store_module.safe_open
    monkeypatch.setattr(store_module, "safe_open", lambda *a, **k: _RecordingOpen(real_open(*a, **k), reads))
    assert torch.equal(TrajectoryStore.open(root).load(0, epochs=[2, 0]), full[[2, 0]])
    assert reads == [(0, 3), (0, 3)]  # codes and scales of rows 0..2 only


def test_int8_store_is_a_quarter_of_float32(tmp_path: Path) -> None:
    params = 4000
    layout = [["w", [params - 10]], ["b", [10]]]
    trajectory = random_walk(EPOCHS + 1, params)
    sizes = {}
    for dtype in ("float32", "int8"):
        key = make_key(param_layout=layout, num_params=params, store_dtype=dtype)
        store = TrajectoryStore.create_or_open(tmp_path / dtype, key)
        store.write_expert(0, trajectory, {})
        sizes[dtype] = (tmp_path / dtype / expert_filename(0)).stat().st_size
        assert store.manifest.experts[0]["dtype"] == dtype
    assert sizes["int8"] / sizes["float32"] < 0.26


def test_int8_corrupt_or_truncated_file_is_a_store_error(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = TrajectoryStore.create_or_open(root, make_key(store_dtype="int8"))
    for i in range(2):
        store.write_expert(i, random_walk(EPOCHS + 1, seed=i), {})
    data = bytearray((root / expert_filename(0)).read_bytes())
    data[-3] ^= 0x01
    (root / expert_filename(0)).write_bytes(bytes(data))
    (root / expert_filename(1)).write_bytes((root / expert_filename(1)).read_bytes()[:-50])
    for i in range(2):
        with pytest.raises(StoreError, match=rf"expert_00{i}\.safetensors: checksum mismatch") as info:
            TrajectoryStore.open(root).load(i, epochs=[0])
        assert "\n" not in str(info.value)


def test_int8_refuses_non_finite_values_and_a_wrong_layout(tmp_path: Path) -> None:
    store = TrajectoryStore.create_or_open(tmp_path / "s", make_key(store_dtype="int8"))
    trajectory = random_walk(EPOCHS + 1)
    trajectory[3, 7] = float("nan")
    with pytest.raises(StoreError, match="NaN or inf"):
        store.write_expert(0, trajectory, {})
    short = make_key(store_dtype="int8", param_layout=LAYOUT[:2])
    with pytest.raises(StoreError, match="param_layout to cover the 240 parameters, but it covers 40"):
        TrajectoryStore.create_or_open(tmp_path / "t", short).write_expert(0, random_walk(EPOCHS + 1), {})
    assert store.finished() == []


# -- stores holding only some epochs -------------------------------------------------------

KEPT = [0, 1, 2, 4]


def test_store_with_some_epochs_maps_epochs_to_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    full = random_trajectory(7)
    store = TrajectoryStore.create_or_open(root, make_key(stored_epochs=KEPT))
    store.write_expert(0, full[KEPT], {})
    entry = json.loads((root / MANIFEST).read_text())["experts"][0]
    assert entry["epochs"] == EPOCHS and entry["stored_epochs"] == KEPT
    store = TrajectoryStore.open(root)
    assert store.num_epochs(0) == EPOCHS and store.stored_epochs(0) == KEPT
    assert torch.equal(store.load(0), full[KEPT])
    reads: list[tuple[int, int]] = []
    real_open = store_module.safe_open
    monkeypatch.setattr(store_module, "safe_open", lambda *a, **k: _RecordingOpen(real_open(*a, **k), reads))
    assert torch.equal(store.load(0, epochs=[4, 1, 2]), full[[4, 1, 2]])
    assert reads == [(3, 4), (1, 3)]  # epoch 4 is row 3
    with pytest.raises(
        StoreError, match=r"expert_000\.safetensors holds epochs 0\.\.2, 4 but epoch 3"
    ) as info:
        store.load(0, epochs=[2, 3])
    assert "\n" not in str(info.value)


def test_int8_store_with_some_epochs(tmp_path: Path) -> None:
    full = random_walk(EPOCHS + 1, step=0.5, seed=4)  # epochs differ by ~0.5, int8 errors are < 0.02
    store = TrajectoryStore.create_or_open(tmp_path / "s", make_key(stored_epochs=KEPT, store_dtype="int8"))
    store.write_expert(0, full[KEPT], {})
    everything = store.load(0)
    assert torch.equal(store.load(0, epochs=[4]), everything[[3]])
    torch.testing.assert_close(everything, full[KEPT], rtol=0, atol=0.02)


def test_stored_epochs_are_checked(tmp_path: Path) -> None:
    store = TrajectoryStore.create_or_open(tmp_path / "s", make_key(stored_epochs=KEPT))
    with pytest.raises(StoreError, match=r"has 5 snapshots but store .* expects 4 \(epochs 0\.\.2, 4\)"):
        store.write_expert(0, random_trajectory(0), {})
    for bad in ([0, 2, 1], [0, 5], []):
        with pytest.raises(StoreError, match=r"not an increasing list of epochs within 0\.\.4"):
            TrajectoryStore.create_or_open(tmp_path / f"bad{len(bad)}", make_key(stored_epochs=bad))


def test_convert_store_to_int8_keeps_every_expert_within_the_bound(two_experts, tmp_path: Path) -> None:
    root, trajectories = two_experts
    source = TrajectoryStore.open(root)
    converted = convert_store(source, tmp_path / "int8", "int8")
    assert converted.finished() == [0, 1]
    assert {k: v for k, v in converted.key.items() if k != "store_dtype"} == {
        k: v for k, v in source.key.items() if k != "store_dtype"
    }
    assert converted.key["store_dtype"] == "int8"
    for index, original in enumerate(trajectories):
        error = (converted.load(index) - original).abs().max()
        assert 0 < error <= original.abs().max() / 127
    assert converted.manifest.experts[1]["test_acc"] == [0.1, 0.5]
    size = lambda store: sum(p.stat().st_size for p in store.root.glob("expert_*"))  # noqa: E731
    assert size(converted) < 0.3 * size(source)
    with pytest.raises(StoreError, match="int4"):
        convert_store(source, tmp_path / "bad", "int4")
    assert not (tmp_path / "bad").exists()
