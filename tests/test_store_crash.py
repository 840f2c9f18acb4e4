"""Saves that cannot lose an annotation: a real process killed (SIGKILL) at every step of ``save_sample``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Box, Collection, Sample
from napari_hybridseg.core.data.store import TRASH_DIR, load_project, recover, save_project, save_sample

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

IMG = np.arange(48, dtype=np.uint8).reshape(6, 8)
OLD_A = (IMG > 20).astype(np.uint8)
NEW_A = (IMG > 30).astype(np.uint8) * 2
NEW_B = (IMG % 3 == 0).astype(np.uint8)

# what the killed process does: one save_sample of one edit
CHILD = """
import sys
import numpy as np
from napari_hybridseg.core.data.store import load_project, save_sample
root, case = sys.argv[1], sys.argv[2]
img = np.arange(48, dtype=np.uint8).reshape(6, 8)
c = load_project(root)
if case == "add":        # a mask drawn on an image that had none (the issue: the next save deleted it)
    c["b"].mask = (img % 3 == 0).astype(np.uint8)
    save_sample(c, root, "b")
elif case == "change":   # a mask redrawn
    c["a"].mask = (img > 30).astype(np.uint8) * 2
    save_sample(c, root, "a")
else:                    # a mask removed
    c["a"].mask = None
    save_sample(c, root, "a")
"""


def _project(root: Path) -> Path:
    c = Collection()
    c.add(Sample("a", image=IMG, mask=OLD_A))
    c.add(Sample("b", image=IMG, boxes=[Box(1, 1, 4, 4, id="b1")]))
    save_project(c, root)
    return root


def _child(root: Path, case: str, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    return subprocess.run([sys.executable, "-c", CHILD, str(root), case], env=full, capture_output=True, text=True,
                          timeout=120)


def _hidden_leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for d in (root, root / "masks", root / "annotations") if d.is_dir()
            for p in d.iterdir() if p.name.startswith(".") and p.name not in (".hybridseg.lock", TRASH_DIR)]


def _state(c: Collection) -> tuple:
    return tuple(None if c[s].mask is None else c[s].mask.tobytes() for s in ("a", "b")) + (len(c["b"].boxes),)


@pytest.mark.parametrize("case,new", [("add", (OLD_A, NEW_B)), ("change", (NEW_A, None)), ("remove", (None, None))])
def test_a_save_killed_at_any_step_loses_nothing(tmp_path, case, new):
    pristine = _project(tmp_path / "pristine")
    old_state = _state(load_project(pristine))
    new_state = tuple(None if m is None else m.tobytes() for m in new) + (1,)
    # count the steps of this save
    counted = tmp_path / "count"
    shutil.copytree(pristine, tmp_path / "probe")
    assert _child(tmp_path / "probe", case, {"HYBRIDSEG_CRASH_COUNT": str(counted)}).returncode == 0
    steps = int(counted.read_text())
    assert steps >= 5  # stage the file(s), commit the journal, rename, clean up
    seen_new = False
    for k in range(1, steps + 1):
        root = tmp_path / f"k{k}"
        shutil.copytree(pristine, root)
        out = _child(root, case, {"HYBRIDSEG_CRASH_AT": str(k)})
        assert out.returncode == -signal.SIGKILL, (k, out.stderr)
        loaded = load_project(root)  # finishes or undoes the interrupted save
        state = _state(loaded)
        assert state in (old_state, new_state), f"killed at step {k}/{steps}: a mixed or broken project"
        if seen_new:
            assert state == new_state, f"killed at step {k}: a later kill must not undo a committed save"
        seen_new = state == new_state
        assert not _hidden_leftovers(root), _hidden_leftovers(root)
        # the next save (the one that used to delete the unlisted mask) loses nothing either
        save_project(loaded, root)
        assert _state(load_project(root)) == state
        if state == old_state and case == "add":
            # the mask the killed save had written is kept for recovery, not deleted
            # (the first step of a save is writing the mask, so from step 1 on there is one to keep)
            trashed = list((root / TRASH_DIR).rglob("*b.png*")) if (root / TRASH_DIR).exists() else []
            assert trashed, f"killed at step {k}: the drawn mask is gone"
        if state == old_state and case == "remove":
            assert (root / "masks" / "a.png").is_file()
    assert seen_new  # the last kill comes after the commit


def test_a_removed_mask_goes_to_the_trash_not_away(tmp_path):
    root = _project(tmp_path / "p")
    c = load_project(root)
    c["a"].mask = None
    save_sample(c, root, "a")
    assert not (root / "masks" / "a.png").exists()
    trashed = list((root / TRASH_DIR).rglob("a.png"))
    assert len(trashed) == 1 and np.array_equal(np.asarray(__import__("PIL.Image").Image.open(trashed[0])), OLD_A)


def test_stale_temporary_files_are_cleaned_on_open(tmp_path):
    root = _project(tmp_path / "p")
    (root / ".project.json.abc123.tmp").write_text("{half a proj")  # left by a killed older version
    (root / "masks" / ".b.png.20260101-000000-1-abcdef.staged").write_bytes(b"\x89PNG")
    assert recover(root) and not _hidden_leftovers(root)
    assert (root / TRASH_DIR).is_dir() and len(list((root / TRASH_DIR).rglob("*"))) >= 2
    assert recover(root) == []  # nothing left to do
    loaded = load_project(root)
    assert "recovered" not in loaded.meta


def test_saves_are_fsynced(tmp_path, monkeypatch):
    import napari_hybridseg.core.data.store as store

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else str(fd))
        return real(fd)

    monkeypatch.setattr(store.os, "fsync", spy)
    root = _project(tmp_path / "p")
    c = load_project(root)
    c["b"].mask = NEW_B
    synced.clear()
    save_sample(c, root, "b")
    if Path("/proc/self/fd").is_dir():
        assert any(s.endswith(".staged") and "/masks/" in s for s in synced)  # the file
        assert str(root / "masks") in synced and str(root.absolute()) in synced  # and its folder


def test_a_mask_the_index_does_not_list_is_not_deleted_by_the_next_save(tmp_path):
    """The issue's case as an older version left it: masks/b.png written, project.json not yet updated."""
    from PIL import Image

    root = _project(tmp_path / "p")
    Image.fromarray(NEW_B).save(root / "masks" / "b.png")
    loaded = load_project(root)
    assert loaded["b"].mask is None  # the index is the truth
    save_project(loaded, root)
    kept = [p for p in root.rglob("b.png") if "masks" in p.parts]
    assert kept and np.array_equal(np.asarray(Image.open(kept[0])), NEW_B)
