"""The shared-memory registry without a server, over objects in a temporary directory standing
in for /dev/shm: what a key may name (no symlink, FIFO or directory), unaligned windows, a
truncated object refused instead of faulting, the region cap, views that outlive their region,
and the ``--allow-client-shm`` flag."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dagserve.errors import InvalidInputError, RegionExistsError, RegionNotFoundError, UnsupportedError
from dagserve.shared_memory import DISABLED_MESSAGE, RegionKind, SharedMemoryRegistry, TensorRef, tensor_ref
from dagserve.types import DataType, InferResponse, RequestedOutput


def make(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return "/" + name


@pytest.fixture
def registry(tmp_path: Path) -> SharedMemoryRegistry:
    return SharedMemoryRegistry(allow_client_shm=True, directory=tmp_path, max_regions=3)


def test_a_key_names_one_regular_object_in_the_directory(tmp_path: Path, registry: SharedMemoryRegistry) -> None:
    """Symlinks (even to a file inside), FIFOs and directories are refused without blocking or
    following; so are keys with a path in them."""
    outside = tmp_path.parent / f"{tmp_path.name}_outside"
    outside.write_bytes(bytes(64))
    try:
        (tmp_path / "link").symlink_to(outside)
        os.mkfifo(tmp_path / "fifo")
        (tmp_path / "dir").mkdir()
        cases = {
            "/link": "Unable to open shared memory region: '/link' (Too many levels of symbolic links)",
            "fifo": "Unable to open shared memory region: 'fifo' (not a shared-memory object)",
            "dir": "Unable to open shared memory region: 'dir' (Is a directory)",
            f"../{outside.name}": "invalid shm key",
            "//": "invalid shm key '//'",
            "triton_python_backend_shm_region_1": "reserved prefix",
        }
        for key, message in cases.items():
            with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
                registry.register_system("r", key, 0, 8)
        assert len(registry) == 0
    finally:
        outside.unlink()


def test_an_unaligned_window_reads_and_writes_the_right_bytes(tmp_path: Path, registry: SharedMemoryRegistry) -> None:
    """mmap wants page-aligned offsets; a region at offset 4100 still maps exactly its bytes."""
    data = np.arange(2048, dtype=np.int32)  # 8192 bytes
    key = make(tmp_path, "big", data.tobytes())
    registry.register_system("r", key, 4100, 64)
    assert registry.status(RegionKind.SYSTEM) == [{"name": "r", "key": key, "offset": 4100, "byte_size": 64}]
    array = registry.input_tensor(TensorRef("r", 8, 16), DataType.INT32, (4,), 4, name="X")
    np.testing.assert_array_equal(array, data[1027:1031])
    assert not array.flags.writeable
    targets = registry.output_targets((RequestedOutput(name="Y", parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8,
                                                             "shared_memory_offset": 56}),))
    response = InferResponse(model_name="m", model_version="1", outputs={"Y": np.array([7, 9], np.int32)},
                             datatypes={"Y": DataType.INT32})
    registry.write_outputs(response, targets)
    written = np.frombuffer((tmp_path / "big").read_bytes(), dtype=np.int32)
    np.testing.assert_array_equal(written[1039:1041], [7, 9])
    assert written[1038] == 1038 and written[1041] == 1041


def test_a_truncated_object_is_refused_not_faulted(tmp_path: Path, registry: SharedMemoryRegistry) -> None:
    """A client that shrinks its object after registering gets a 400; reading the mapping would
    have killed the server with SIGBUS."""
    key = make(tmp_path, "shrinks", bytes(8192))
    registry.register_system("r", key, 0, 8192)
    os.truncate(tmp_path / "shrinks", 16)
    registry.input_tensor(TensorRef("r", 0, 16), DataType.UINT8, (16,), 16, name="X")  # still backed
    with pytest.raises(InvalidInputError, match="no longer holds the registered 8192 bytes"):
        registry.input_tensor(TensorRef("r", 4096, 16), DataType.UINT8, (16,), 16, name="X")


def test_registration_rules(tmp_path: Path, registry: SharedMemoryRegistry) -> None:
    """A name once, at most ``max_regions`` regions, a positive size; unregister of an unknown
    name or of the other kind does nothing."""
    key = make(tmp_path, "obj", bytes(64))
    registry.register_system("a", key, 0, 8)
    with pytest.raises(RegionExistsError, match="shared memory region 'a' already in manager"):
        registry.register_system("a", key, 0, 8)
    with pytest.raises(InvalidInputError, match="byte_size must be positive"):
        registry.register_system("z", key, 0, 0)
    registry.register_system("b", key, 8, 8)
    registry.register_system("c", key, 16, 8)
    with pytest.raises(InvalidInputError, match="3 regions are registered"):
        registry.register_system("d", key, 24, 8)
    registry.unregister(RegionKind.CUDA, "a")
    registry.unregister(RegionKind.SYSTEM, "nope")
    assert [r["name"] for r in registry.status(RegionKind.SYSTEM)] == ["a", "b", "c"]
    with pytest.raises(RegionNotFoundError, match="registered as system shared memory, not CUDA"):
        registry.status(RegionKind.CUDA, "a")
    registry.unregister(RegionKind.SYSTEM)
    assert registry.status(RegionKind.SYSTEM) == []


def test_views_outlive_their_region(tmp_path: Path, registry: SharedMemoryRegistry) -> None:
    """Unregistering (or closing the registry) while a request holds a view leaves the view
    readable and writable; the region is gone for new requests."""
    key = make(tmp_path, "obj", np.arange(4, dtype=np.float32).tobytes())
    registry.register_system("r", key, 0, 16)
    array = registry.input_tensor(TensorRef("r", 0, 16), DataType.FP32, (4,), 4, name="X")
    targets = registry.output_targets((RequestedOutput(name="Y", parameters={"shared_memory_region": "r", "shared_memory_byte_size": 16}),))
    registry.unregister(RegionKind.SYSTEM, "r")
    registry.close()
    np.testing.assert_array_equal(array, [0, 1, 2, 3])
    response = InferResponse(model_name="m", model_version="1", outputs={"Y": array * 10},
                             datatypes={"Y": DataType.FP32})
    registry.write_outputs(response, targets)
    np.testing.assert_array_equal(np.frombuffer((tmp_path / "obj").read_bytes(), np.float32), [0, 10, 20, 30])
    with pytest.raises(RegionNotFoundError, match="Unable to find shared memory region: 'r'"):
        registry.input_tensor(TensorRef("r", 0, 16), DataType.FP32, (4,), 4, name="X")


def test_disabled_registry_refuses_with_tritons_message(tmp_path: Path) -> None:
    """Off (the default): registering and using regions are UNSUPPORTED; status is empty."""
    registry = SharedMemoryRegistry(directory=tmp_path)
    key = make(tmp_path, "obj", bytes(16))
    with pytest.raises(UnsupportedError, match="Client shared memory is disabled") as info:
        registry.register_system("r", key, 0, 16)
    assert str(info.value) == DISABLED_MESSAGE
    with pytest.raises(UnsupportedError):
        registry.input_tensor(TensorRef("r", 0, 16), DataType.FP32, (4,), 4, name="X")
    assert registry.status(RegionKind.SYSTEM) == []


@pytest.mark.parametrize(("params", "message"), [
    ({"shared_memory_byte_size": 4}, "'shared_memory_byte_size' can not be specified without 'shared_memory_region'"),
    ({"shared_memory_region": "r"}, "needs 'shared_memory_byte_size' too"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "expected a non-negative integer"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": -1}, "non-negative"),
])
def test_tensor_parameters(params: dict[str, object], message: str) -> None:
    """The three parameters are checked by type and presence, naming the tensor."""
    with pytest.raises(InvalidInputError, match=message):
        tensor_ref(params, "input 'X'")
    assert tensor_ref({"binary_data": True}, "input 'X'") is None
    assert tensor_ref({"shared_memory_region": "r", "shared_memory_byte_size": 4}, "x") == TensorRef("r", 0, 4)


def test_allow_client_shm_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--allow-client-shm`` (Triton's flag) and DAGSERVE_ALLOW_CLIENT_SHM reach FrontendOptions;
    off by default."""
    from dagserve.cli import build_parser
    from dagserve.cli_security import serve_options

    parser = build_parser()
    assert serve_options(parser.parse_args(["serve", "--model-repository", "."]))["allow_client_shm"] is False
    args = parser.parse_args(["serve", "--model-repository", ".", "--allow-client-shm=true"])
    assert serve_options(args)["allow_client_shm"] is True
    monkeypatch.setenv("DAGSERVE_ALLOW_CLIENT_SHM", "true")
    args = build_parser().parse_args(["serve", "--model-repository", "."])
    assert serve_options(args)["allow_client_shm"] is True
