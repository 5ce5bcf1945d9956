"""Writing output whole or not at all (bundler.files): a failure names the target, and leaves nothing of ours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bundler.files import TEMP_PREFIX, staged_folder


def test_staged_files_move_in_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("old a")
    (out / "keep.txt").write_text("not ours")
    real = os.replace
    moves: list[str] = []

    def fail_on_the_second_move_in(src: Any, dst: Any) -> None:
        if Path(dst).parent == out and Path(src).parent.name.startswith(TEMP_PREFIX):
            moves.append(Path(dst).name)
            if len(moves) == 2:
                raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_the_second_move_in)
    with pytest.raises(OSError) as info, staged_folder(out) as staging:
        (staging / "a.json").write_text("new a")
        (staging / "b.json").write_text("new b")
    assert info.value.filename == str(out / "b.json")  # the target, never our temporary file
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "keep.txt"]
    assert (out / "a.json").read_text() == "old a"  # what the first move replaced is back


def test_a_target_that_is_a_folder_stops_every_move(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "b.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as info, staged_folder(out) as staging:
        (staging / "a.json").write_text("a")
        (staging / "b.json").write_text("b")
    assert info.value.filename == str(out / "b.json")
    assert sorted(p.name for p in out.iterdir()) == ["b.json"]


def test_an_error_while_writing_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info, staged_folder(tmp_path / "out"):
        raise OSError(28, "No space left on device", "/tmp/.thread-bundler-staging-x/a.json")
    assert info.value.filename == str(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_folder_being_held_is_never_judged_abandoned_before_its_lock_is_taken(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's `remove_abandoned` may run at any moment of `held_folder`; the worst is just before the
    lock is taken. Then it must find nothing it could take for a killed run's folder."""
    from bundler import files

    judged: list[list[Path]] = []
    lock = files._lock

    def another_process_looks_first(fd: int, *, wait: bool) -> bool:
        if not judged:  # (the first lock taken is held_folder's; remove_abandoned's own are let through)
            judged.append([])
            judged[0] = files.remove_abandoned(tmp_path, "run-")
        return lock(fd, wait=wait)

    monkeypatch.setattr(files, "_lock", another_process_looks_first)
    folder, fd = files.held_folder("run-", tmp_path)
    monkeypatch.undo()
    try:
        assert judged == [[]]
        assert folder.is_dir() and (folder / ".held").is_file()
        assert files.remove_abandoned(tmp_path, "run-") == []  # held: left alone
    finally:
        os.close(fd)
    assert files.remove_abandoned(tmp_path, "run-") == [folder]  # let go: a later run removes it
    assert list(tmp_path.iterdir()) == []
