"""Fetch stage: model.tar.gz unpacking, and every refusal of an unsafe or broken archive."""
from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from modelkiln.compiler.archive import Limits, extract_model
from modelkiln.errors import CompilationError


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            _add_file(tar, name, data)
    return path


def _make_tar_with(path: Path, info: tarfile.TarInfo, mode: str = "w:gz") -> Path:
    """An archive holding a normal file and then one special entry."""
    with tarfile.open(path, mode) as tar:
        _add_file(tar, "model.onnx", b"onnx-bytes")
        tar.addfile(info)
    return path


def _refused(source: Path, dest: Path, limits: Limits = Limits()) -> CompilationError:
    with pytest.raises(CompilationError) as info:
        extract_model(source, dest, limits)
    error = info.value
    assert error.stage == "fetch"
    assert error.hint.strip()
    assert error.message.strip()
    return error


def _files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---- accepted inputs -----------------------------------------------------------------------------------

def test_tar_gz_with_top_level_and_nested_files(tmp_path):
    archive = _make_tar(
        tmp_path / "model.tar.gz",
        [("model.onnx", b"\x08\x07onnx"), ("code/inference.py", b"print('hi')\n"), ("labels.txt", b"cat\ndog\n")],
    )
    dest = tmp_path / "out"
    result = extract_model(archive, dest)
    assert result == dest
    assert (dest / "model.onnx").read_bytes() == b"\x08\x07onnx"
    assert (dest / "code" / "inference.py").read_bytes() == b"print('hi')\n"
    assert (dest / "labels.txt").read_bytes() == b"cat\ndog\n"
    assert _files_under(dest) == sorted([Path("model.onnx"), Path("code/inference.py"), Path("labels.txt")])


def test_tar_with_directory_entries_and_dot_prefix(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("./weights")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        _add_file(tar, "./weights/model.onnx", b"w")
        empty = tarfile.TarInfo("empty_dir")
        empty.type = tarfile.DIRTYPE
        tar.addfile(empty)
    dest = tmp_path / "out"
    assert extract_model(archive, dest) == dest
    assert (dest / "weights" / "model.onnx").read_bytes() == b"w"
    assert (dest / "empty_dir").is_dir()


def test_uncompressed_tar(tmp_path):
    archive = _make_tar(tmp_path / "model.tar", [("model.onnx", b"plain")], mode="w")
    dest = tmp_path / "out"
    extract_model(archive, dest)
    assert (dest / "model.onnx").read_bytes() == b"plain"


def test_bare_model_file_is_copied(tmp_path):
    source = tmp_path / "resnet.onnx"
    source.write_bytes(b"\x08\x07not-a-tar" * 10)
    dest = tmp_path / "out"
    result = extract_model(source, dest)
    assert result == dest
    assert (dest / "resnet.onnx").read_bytes() == source.read_bytes()
    assert source.exists()  # copied, not moved


def test_directory_is_returned_as_is(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    dest = tmp_path / "out"
    assert extract_model(folder, dest) == folder
    assert not dest.exists()


# ---- refusals --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../evil", "sub/../../evil", "./../evil"])
def test_path_traversal_is_refused(tmp_path, name):
    archive = _make_tar(tmp_path / "model.tar.gz", [(name, b"pwned")])
    dest = tmp_path / "a" / "out"
    error = _refused(archive, dest)
    assert "outside" in error.message
    assert not (tmp_path / "a" / "evil").exists()
    assert not (tmp_path / "evil").exists()


def test_absolute_member_is_refused(tmp_path):
    archive = _make_tar(tmp_path / "model.tar.gz", [("/etc/x", b"pwned")])
    dest = tmp_path / "out"
    _refused(archive, dest)
    assert _files_under(dest) == []


@pytest.mark.parametrize("kind, name, target", [
    (tarfile.SYMTYPE, "model.onnx.link", "/etc/passwd"),
    (tarfile.LNKTYPE, "copy.onnx", "model.onnx"),
])
def test_link_members_are_refused(tmp_path, kind, name, target):
    link = tarfile.TarInfo(name)
    link.type = kind
    link.linkname = target
    archive = _make_tar_with(tmp_path / "model.tar.gz", link)
    dest = tmp_path / "out"
    error = _refused(archive, dest)
    assert "link" in error.message
    assert not (dest / name).is_symlink() and not (dest / name).exists()


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_special_file_member_is_refused(tmp_path, kind):
    special = tarfile.TarInfo("device")
    special.type = kind
    archive = _make_tar_with(tmp_path / "model.tar.gz", special)
    dest = tmp_path / "out"
    error = _refused(archive, dest)
    assert "regular file" in error.message
    assert not (dest / "device").exists()


def test_size_bomb_is_refused(tmp_path):
    archive = _make_tar(tmp_path / "model.tar.gz", [("model.onnx", bytes(10_000))])
    assert archive.stat().st_size < 1000  # small on disk, large unpacked
    dest = tmp_path / "out"
    _refused(archive, dest, Limits(max_bytes=1000))
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written <= 1000


def test_size_limit_counts_all_members(tmp_path):
    archive = _make_tar(tmp_path / "model.tar.gz", [(f"part{i}.bin", bytes(400)) for i in range(4)])
    _refused(archive, tmp_path / "out", Limits(max_bytes=1000))
    # The same archive fits under a limit it does not exceed.
    ok = tmp_path / "ok"
    extract_model(archive, ok, Limits(max_bytes=1600))
    assert len(_files_under(ok)) == 4


def test_too_many_members_is_refused(tmp_path):
    archive = _make_tar(tmp_path / "model.tar.gz", [(f"f{i}.txt", b"x") for i in range(5)])
    dest = tmp_path / "out"
    error = _refused(archive, dest, Limits(max_members=3))
    assert "3" in error.message
    assert len(_files_under(dest)) <= 3
    # Exactly at the limit is fine.
    ok = tmp_path / "ok"
    extract_model(archive, ok, Limits(max_members=5))
    assert len(_files_under(ok)) == 5


def test_truncated_tar_gz_is_refused(tmp_path):
    rng = random.Random(7)
    full = _make_tar(
        tmp_path / "full.tar.gz",
        [("model.onnx", rng.randbytes(200_000)), ("weights.bin", rng.randbytes(200_000))],
    )
    data = full.read_bytes()
    truncated = tmp_path / "model.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    _refused(truncated, tmp_path / "out")


def test_truncated_tar_gz_cut_early_is_refused(tmp_path):
    full = _make_tar(tmp_path / "full.tar.gz", [("model.onnx", b"x" * 5000)])
    truncated = tmp_path / "model.tar.gz"
    truncated.write_bytes(full.read_bytes()[:20])
    _refused(truncated, tmp_path / "out")


@pytest.mark.parametrize("name", ["model.tar.gz", "model.tgz", "model.tar"])
def test_tar_named_file_that_is_not_a_tar_is_refused(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(random.Random(3).randbytes(4096))
    dest = tmp_path / "out"
    error = _refused(source, dest)
    assert name in error.message
    assert _files_under(dest) == []


def test_missing_path_is_refused(tmp_path):
    error = _refused(tmp_path / "nope" / "model.tar.gz", tmp_path / "out")
    assert "does not exist" in error.message
