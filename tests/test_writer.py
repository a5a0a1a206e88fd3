"""The writer: done follows durable values, the file's points per pass stays true, MPI-IO only where safe."""

import logging
import shutil

import h5py
import numpy as np

from mpiland.jobfile import load_job
from mpiland.run import run_job
from mpiland.surface import SurfaceWriter, choose_writer, mpio_safe

from util import write_job

NFS = "server:/export /work nfs4 rw,relatime 0 0\n"
MOUNTS = "/dev/sda1 / ext4 rw 0 0\n{tmp} {tmp} {kind} rw 0 0\n"


def test_done_is_marked_only_after_a_flush_that_follows_the_values(tmp_path, monkeypatch):
    run_job(load_job(write_job(tmp_path, grid="x = [-1.0, 1.0, 4]")))
    path = tmp_path / "surface.h5"
    with h5py.File(path, "r+") as f:
        f["done"][...] = 0
    events = []
    real_set, real_flush = h5py.Dataset.__setitem__, h5py.File.flush

    def setitem(ds, key, value):
        events.append("done" if ds.name == "/done" else "value")
        real_set(ds, key, value)

    def flush(f):
        events.append("flush")
        real_flush(f)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    monkeypatch.setattr(h5py.File, "flush", flush)
    writer = SurfaceWriter(path, mark_seconds=0.0)
    metrics = writer.metrics
    for chunk in ([0, 1], [2, 3]):
        pts = np.array(chunk)
        writer.write(pts, {m: np.ones(2) for m in metrics}, np.ones(2))
    writer.close()
    monkeypatch.undo()
    seen_value, flushed = False, True
    for e in events:
        if e == "value":
            seen_value, flushed = True, False
        elif e == "flush":
            flushed = True
        elif e == "done":
            assert seen_value and flushed, events
    with h5py.File(path, "r") as f:
        assert f["done"][...].all()


def test_done_waits_for_the_time_based_flush(tmp_path):
    run_job(load_job(write_job(tmp_path, grid="x = [-1.0, 1.0, 4]")))
    path = tmp_path / "surface.h5"
    with h5py.File(path, "r+") as f:
        f["done"][...] = 0
    writer = SurfaceWriter(path, mark_seconds=3600.0, min_mark_seconds=3600.0)
    writer.write(np.array([0, 1]), {m: np.zeros(2) for m in writer.metrics}, np.ones(2))
    shutil.copy(path, tmp_path / "crash.h5")  # what a crash now would leave
    with h5py.File(tmp_path / "crash.h5", "r") as f:
        assert not f["done"][...].any()
    writer.close()
    with h5py.File(path, "r") as f:
        assert f["done"][...].sum() == 2 and (f["seconds"][...][:2] == 1).all()


def test_points_per_pass_stays_true_on_resume(tmp_path):
    path = write_job(tmp_path, extra="points_per_pass = 4\n")
    run_job(load_job(path))
    out = tmp_path / "surface.h5"
    with h5py.File(out, "r+") as f:
        f["done"][1:, :] = 0
    assert run_job(load_job(path, values={"run.points_per_pass": 2})).points_evaluated == 16
    with h5py.File(out, "r") as f:
        assert f.attrs["points_per_pass"] == 2
        assert list(f.attrs["points_per_pass_history"]) == [4, 2]


def test_auto_avoids_mpio_on_nfs_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mpiland"):
        assert choose_writer("auto", 2, True, tmp_path / "s.h5", mounts=MOUNTS.format(tmp=tmp_path, kind="nfs4")) \
            == "gather"
    assert "writer auto: gather" in caplog.text and "nfs4" in caplog.text


def test_mount_table_decides_per_file_system(tmp_path):
    for kind, safe in (("nfs", False), ("fuse.sshfs", False), ("cifs", False), ("fuseblk", False),
                       ("lustre", True), ("gpfs", True), ("ext4", True), ("tmpfs", True)):
        ok, why = mpio_safe(tmp_path, mounts=MOUNTS.format(tmp=tmp_path, kind=kind))
        assert ok is safe, (kind, why)
        assert kind in why
    ok, why = mpio_safe(tmp_path / "not" / "yet", mounts=NFS + MOUNTS.format(tmp=tmp_path, kind="ext4"))
    assert ok and "POSIX lock works" in why  # the nearest existing directory is checked


def test_auto_avoids_mpio_where_posix_locks_fail(tmp_path, monkeypatch):
    from mpiland.surface import storage

    def no_lock(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(storage.fcntl, "lockf", no_lock)
    ok, why = mpio_safe(tmp_path, mounts=MOUNTS.format(tmp=tmp_path, kind="ext4"))
    assert not ok and "POSIX lock fails" in why
    assert choose_writer("auto", 4, True, tmp_path / "s.h5", mounts=MOUNTS.format(tmp=tmp_path, kind="ext4")) \
        == "gather"


def test_explicit_writers_and_single_process(tmp_path):
    mounts = MOUNTS.format(tmp=tmp_path, kind="ext4")
    assert choose_writer("auto", 1, True, tmp_path / "s.h5", mounts=mounts) == "gather"
    assert choose_writer("auto", 2, False, tmp_path / "s.h5", mounts=mounts) == "gather"
    assert choose_writer("auto", 2, True, tmp_path / "s.h5", mounts=mounts) == "mpio"
    assert choose_writer("gather", 2, True, tmp_path / "s.h5", mounts=mounts) == "gather"
