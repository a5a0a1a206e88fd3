import pytest

from mpiland.comm import SelfComm
from mpiland.launch import check_launch, local_rank_and_size, resolve_device, threads_per_rank
from mpiland.errors import LaunchError
from mpiland.grid import Grid, auto_chunk_size, chain_block, chain_links, make_chunks, row_runs
from mpiland.spec import Axis, GridSpec

import numpy as np


class FakeComm(SelfComm):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


def test_local_rank_from_launcher_variables():
    assert local_rank_and_size(SelfComm(), {"SLURM_LOCALID": "3", "SLURM_NTASKS_PER_NODE": "4"}) == (3, 4)
    assert local_rank_and_size(SelfComm(), {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}) == (1, 2)
    assert local_rank_and_size(SelfComm(), {"SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)"}) == (1, 4)
    assert local_rank_and_size(FakeComm(2, 3), {}) == (2, 3)


def test_threads_per_rank():
    assert threads_per_rank(5, 2, {}) == 5
    assert threads_per_rank(0, 4, {"SLURM_CPUS_PER_TASK": "6"}) == 6
    assert threads_per_rank(0, 1000, {}) == 1


def test_devices_on_a_cpu_machine():
    import torch

    assert resolve_device("cpu", 0) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", 3) == torch.device("cpu")
        with pytest.raises(LaunchError, match="no CUDA device"):
            resolve_device("cuda:1", 0)


def test_singleton_launch_detection():
    with pytest.raises(LaunchError, match="launched 4 singleton processes"):
        check_launch(SelfComm(), {"SLURM_STEP_NUM_TASKS": "4"})
    with pytest.raises(LaunchError, match="different MPI library"):
        check_launch(SelfComm(), {"PMI_SIZE": "2"})
    check_launch(SelfComm(), {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "8"})
    check_launch(FakeComm(0, 4), {"SLURM_STEP_NUM_TASKS": "4"})


def test_grid_coordinates_and_chunks():
    grid = Grid.from_spec(GridSpec(Axis(-1, 1, 3), Axis(0, 1, 2)))
    assert grid.shape == (3, 2) and grid.size == 6
    np.testing.assert_array_equal(grid.coords(np.array([0, 3, 5])), [[-1, 0], [0, 1], [1, 1]])
    done = np.zeros((3, 2), dtype=np.uint8)
    done[0, 1] = done[2, 0] = 1
    chunks = make_chunks(done, n_ranks=2, chunk_size=2)
    assert len(chunks) == 2
    np.testing.assert_array_equal(chunks.points(0), [0, 2])
    np.testing.assert_array_equal(chunks.points(1), [3, 5])
    assert auto_chunk_size(2601, 4) == 64 and auto_chunk_size(10, 4) == 1


def test_row_runs_split_at_rows_and_gaps():
    runs = row_runs(np.array([1, 2, 3, 4, 7]), (3, 3))
    assert runs == [(0, 1, 3, 0, 2), (1, 0, 2, 2, 4), (2, 1, 2, 4, 5)]
    assert row_runs(np.array([0, 1, 2, 5]), (8,)) == [(0, 0, 3, 0, 3), (0, 5, 6, 3, 4)]


def test_chunks_are_whole_blocks_fixed_by_the_grid():
    done = np.zeros(20, dtype=np.uint8)
    done[[0, 1, 2, 3, 9]] = 1  # block 0 finished; block 2 partly (as a pass size change could leave it)
    chunks = make_chunks(done, n_ranks=2, chunk_size=5, block=4)
    assert chunks.size == 8 and len(chunks) == 2
    np.testing.assert_array_equal(chunks.points(0), [4, 5, 6, 7, 8, 10, 11])
    groups = chunks.groups(chunks.points(0))
    assert [(g.start, g.stop) for g in groups] == [(0, 4), (4, 7)]
    for n_ranks in (1, 2, 3):  # the same blocks whatever the launch
        c = make_chunks(np.zeros(20, dtype=np.uint8), n_ranks, block=4)
        blocks = {tuple(c.points(i)[g]) for i in range(len(c)) for g in c.groups(c.points(i))}
        assert blocks == {tuple(range(b, b + 4)) for b in range(0, 20, 4)}


def test_warm_start_chains_are_fixed_by_the_grid():
    """Chains: runs of one row, at most hessian.chain long, in blocks of whole passes; a chunk holds whole
    blocks, so one rank evaluates a chain in order whatever the launch."""
    assert chain_block(1, 11, 16) == 11 and chain_block(1, 51, 16) == 16 and chain_block(4, 11, 16) == 12
    assert chain_block(16, 11, 16) == 16 and chain_block(3, 2, 16) == 3
    with pytest.raises(ValueError):
        chain_block(0, 11, 16)
    # a 3 × 5 grid in blocks of 4: links break at a row start, a block start and a gap
    points = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11])
    np.testing.assert_array_equal(chain_links(points, 5, 4), [0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1])
    for n_ranks in (1, 2, 5):
        c = make_chunks(np.zeros((3, 5), dtype=np.uint8), n_ranks, block=4, passes=2)
        assert all(c.points(i)[0] % 4 == 0 for i in range(len(c)))  # chunks start at a block
        passes = [tuple(c.points(i)[g]) for i in range(len(c)) for g in c.groups(c.points(i))]
        assert passes == [(j, j + 1) for j in range(0, 14, 2)] + [(14,)]
    with pytest.raises(ValueError, match="multiple"):
        make_chunks(np.zeros(6, dtype=np.uint8), 1, block=3, passes=2)
