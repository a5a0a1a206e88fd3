"""The ``mpiland`` command line: parses options and calls the library, nothing more.

User errors print one line, ``error: <message>``, and exit with status 2 (no
traceback unless ``--debug``); so do bad options and arguments (click's usage
errors), and a message with embedded newlines (HDF5's) is flattened to one line. Under MPI, an error that not every rank shares, or
any unexpected exception, aborts the whole job so that no rank is left waiting.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any, Callable

import click

from .version import __version__
from .comm import Comm, agree, world
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, MpilandError
from .jobfile import load_job
from .launch import choose_wait_policy, resolve_device, threads_per_rank
from .signals import StopFlag

log = logging.getLogger("mpiland")

ABORT_DRAIN_S = 0.5
"""Seconds a failing rank waits between writing its error and aborting the MPI job."""


def _setup_logging(rank: int, size: int, verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if (rank == 0 or verbose) else logging.WARNING
    prefix = f"[mpiland r{rank}]" if size > 1 else "[mpiland]"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def one_line(text: str) -> str:
    """``text`` on one line: embedded newlines (an HDF5 message, a usage block) become single spaces."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _fail(exc: BaseException, debug: bool, comm: Comm | None = None) -> None:
    """Report an error and end the process (or the whole MPI job) with the right status."""
    size = comm.Get_size() if comm is not None else 1
    rank = comm.Get_rank() if comm is not None else 0
    user = isinstance(exc, MpilandError)
    agreed = getattr(exc, "agreed", False)
    if user and (size == 1 or agreed):
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        if rank == 0:
            click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    # The one line first: an abort kills the ranks while the launcher may still be forwarding their output,
    # so what matters most must not wait behind a long traceback.
    if user:
        click.echo(f"error (rank {rank}): {one_line(str(exc))}", err=True)
    else:
        click.echo(f"error (rank {rank}): {exc.__class__.__name__}: {one_line(str(exc))}; aborting all ranks", err=True)
    if debug or not user:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    if comm is not None and size > 1:
        time.sleep(ABORT_DRAIN_S)  # let the launcher forward the lines above before every rank is killed
        comm.Abort(EXIT_USAGE if user else 1)
    sys.exit(EXIT_USAGE if user else 1)


def _guard(fn: Callable[[], Any], debug: bool) -> Any:
    try:
        return fn()
    except MpilandError as exc:
        _fail(exc, debug)


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks for user errors.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpiland")
def cli() -> None:
    """Distributed loss-landscape evaluation for PyTorch models."""


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Surface file path (output.path).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace a surface file made by another job; a file of the same job is resumed regardless (output.overwrite).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a job key, e.g. --set grid.x=[-1,1,11]. Repeatable.")
@click.option("--unset", "unset", multiple=True, metavar="KEY",
              help="Remove a job key so its default applies, e.g. --unset grid.y for a 1D run. Repeatable.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (run.device).")
@click.option("--chunk-size", type=int, help="Points per chunk; 0 = automatic (run.chunk_size).")
@click.option("--writer", type=click.Choice(["auto", "gather", "mpio"]), help="Surface writer (run.writer).")
@click.option("--threads", type=int, help="Torch threads per rank; 0 = the cores given to the rank (run.threads).")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), help="Progress display (run.progress).")
@click.option("--points-per-pass", type=int, help="Grid points per forward pass; 0 = automatic (run.points_per_pass).")
@click.option("--group-size", type=int,
              help="Ranks per point group, which evaluate the same points on shards of the data; 0 = automatic "
                   "(run.group_size).")
@click.option("--autocast", type=click.Choice(["none", "bf16", "fp16"]), help="Mixed precision (run.autocast).")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the forward pass (run.compile).")
@click.option("--channels-last/--no-channels-last", default=None, help="channels_last activations (run.channels_last).")
@click.option("--bn", type=click.Choice(["eval", "recompute"]),
              help="BatchNorm statistics: as loaded, or recomputed at every point (model.bn).")
@click.option("--hessian/--no-hessian", default=None,
              help="Hessian λmax, λmin and |λmin/λmax| at every point (hessian.enabled).")
@click.option("--verbose", "-v", is_flag=True, help="Let every rank log, not only rank 0.")
@debug_option
def run(job_file: str, output: str | None, overwrite: bool | None, overrides: tuple[str, ...], unset: tuple[str, ...],
        device: str | None,
        chunk_size: int | None, writer: str | None, threads: int | None, progress: str | None,
        points_per_pass: int | None, group_size: int | None, autocast: str | None, compile_: bool | None,
        channels_last: bool | None, bn: str | None, hessian: bool | None, verbose: bool, debug: bool) -> None:
    """Evaluate the landscape JOB_FILE describes (single process, mpiexec or srun alike)."""
    flags = {"output.path": output, "run.device": device, "run.chunk_size": chunk_size,
             "run.writer": writer, "run.threads": threads, "output.overwrite": overwrite,
             "run.points_per_pass": points_per_pass, "run.group_size": group_size, "run.autocast": autocast, "run.compile": compile_,
             "run.channels_last": channels_last, "model.bn": bn,
             "hessian.enabled": hessian}
    values = {key: value for key, value in flags.items() if value is not None}

    def call(comm: Comm, stop: StopFlag) -> bool:
        from .run import run_job  # torch: imported only by the commands that compute

        job = agree(comm, lambda: load_job(job_file, list(overrides), values, list(unset)))
        return run_job(job, comm=comm, progress=progress, stop=stop).interrupted

    _compute(call, verbose, debug)


def _compute(call: Callable[[Comm, StopFlag], bool], verbose: bool, debug: bool) -> None:
    """Run a computing command on every rank: stop signals from the start, one error ends all ranks,
    exit status 3 when ``call`` says a stop signal interrupted it."""
    _setup_logging(0, 1, verbose, debug)
    stop = StopFlag().__enter__()
    comm = world()
    _setup_logging(comm.Get_rank(), comm.Get_size(), verbose, debug)
    try:
        interrupted = call(comm, stop)
    except BaseException as exc:  # noqa: BLE001 - every failure must end all ranks
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, KeyboardInterrupt) and comm.Get_size() == 1:
            click.echo("interrupted", err=True)
            sys.exit(130)
        _fail(exc, debug, comm)
        return
    if interrupted:
        stop.ignore_further()  # a repeated stop signal while exiting must not hide status 3
        sys.exit(EXIT_INTERRUPTED)


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.argument("ends", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--curve", type=click.Choice(["bezier", "polychain"]), help="The curve to train (connect.curve).")
@click.option("--bends", type=int, help="Bends between the two ends (connect.bends).")
@click.option("--epochs", type=int, help="Training epochs of the bends (connect.epochs).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Surface file of the curve (output.path).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace a surface file made by another job (output.overwrite).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job key. Repeatable.")
@click.option("--unset", "unset", multiple=True, metavar="KEY",
              help="Remove a job key so its default applies, e.g. --unset grid.y for a 1D run. Repeatable.")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), help="Progress display (run.progress).")
@click.option("--verbose", "-v", is_flag=True, help="Let every rank log, not only rank 0.")
@debug_option
def connect(job_file: str, ends: tuple[str, ...], curve: str | None, bends: int | None, epochs: int | None,
            output: str | None, overwrite: bool | None, overrides: tuple[str, ...], unset: tuple[str, ...],
            progress: str | None, verbose: bool, debug: bool) -> None:
    """Find a low-loss curve between the modes ENDS (A.pt B.pt, else connect.ends) of JOB_FILE's model
    (Garipov et al. 2018), then evaluate it beside the straight line, barriers included."""
    flags = {"connect.curve": curve, "connect.bends": bends, "connect.epochs": epochs, "output.path": output,
             "output.overwrite": overwrite}
    values = {key: value for key, value in flags.items() if value is not None}

    def call(comm: Comm, stop: StopFlag) -> bool:
        from .run import run_connect  # torch: imported only by the commands that compute

        job = agree(comm, lambda: load_job(job_file, list(overrides), values, list(unset)))
        result, summary = run_connect(job, ends, comm=comm, progress=progress, stop=stop)
        return result.stopped or summary is None or summary.interrupted

    _compute(call, verbose, debug)


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Where the aligned B goes (.pt).")
@click.option("--seed", type=int, default=0, show_default=True, help="Order in which permutation groups are matched.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job key. Repeatable.")
@debug_option
def align(job_file: str, model_a: str, model_b: str, out: str, seed: int, overrides: tuple[str, ...],
          debug: bool) -> None:
    """Permute the hidden units of MODEL_B to match MODEL_A (weight matching, Ainsworth et al. 2023) and save
    it to --out; JOB_FILE's [model] gives the architecture. The aligned model computes the same function."""
    def call() -> None:
        from .run import align_checkpoints  # torch: imported only by the commands that compute

        job = load_job(job_file, list(overrides))
        done = align_checkpoints(job, model_a, model_b, out, seed)
        click.echo(f"aligned {model_b} to {model_a}: {done.permuted_units} of {done.units} hidden units moved; "
                   f"distance to A {done.distance_before:.6g} -> {done.distance_after:.6g}; saved {done.path}")

    _guard(call, debug)


@cli.command()
@click.argument("surface_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["auto", "curve", "contour", "contourf", "heatmap", "surface3d", "spectrum",
                                           "all"]),
              default="auto", show_default=True,
              help="Plot kind (auto: curve for 1D, contour for 2D; spectrum: the Hessian eigenvalue density of a "
                   "file made with hessian.spectrum).")
@click.option("--metric", help="Dataset to plot, e.g. test_loss or train_acc (default: the first loss).")
@click.option("--out", type=click.Path(), help="Output file or directory (default: beside the (first) surface file).")
@click.option("--format", "formats", multiple=True, type=click.Choice(["png", "pdf", "svg"]),
              help="Image format(s); repeatable (default: png, pdf with --style paper).")
@click.option("--log/--linear", "log_scale", default=None,
              help="Logarithmic or linear loss scale / levels (default: log for a loss on contours and heatmaps, "
                   "linear otherwise).")
@click.option("--levels", type=int, help="Number of contour levels (heatmap: colour bands; surface3d: floor contours).")
@click.option("--vmin", type=float, help="Lower colour/level limit (a curve's lower y limit).")
@click.option("--vmax", type=float, help="Upper colour/level limit (a curve's upper y limit).")
@click.option("--zmax", type=float, help="Clip a surface3d plot's height here (default: a robust top, stated on "
                                         "its colourbar).")
@click.option("--style", type=click.Choice(["default", "paper"]), default="default", show_default=True,
              help="paper: a one-column figure (3.3 in wide, 8 pt text, thin lines), vector PDF by default.")
@debug_option
def plot(surface_files: tuple[str, ...], kind: str, metric: str | None, out: str | None, formats: tuple[str, ...],
         log_scale: bool | None, levels: int | None, vmin: float | None, vmax: float | None, zmax: float | None,
         style: str, debug: bool) -> None:
    """Draw curves, contours, heatmaps or 3D surfaces from SURFACE_FILES; several files are drawn together
    (1D curves overlaid in one axes, 2D surfaces as side-by-side panels on one colour scale)."""
    from .plots import plot_surfaces

    paths = _guard(lambda: plot_surfaces(list(surface_files), kind=kind, metric=metric, out=out,
                                         formats=formats or None, log=log_scale, levels=levels, vmin=vmin,
                                         vmax=vmax, zmax=zmax, style=style), debug)
    for p in paths:
        click.echo(str(p))


@cli.command()
@click.argument("surface_file", type=click.Path(dir_okay=False))
@click.option("--to", "to", required=True, type=click.Choice(["npz", "csv", "vts", "html"]),
              help="npz: the grid-shaped arrays; csv: one row per grid point; vts: a VTK structured grid "
                   "for ParaView; html: an interactive page (vts and html: pip install 'mpiland[export]').")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="File to write (default: beside the surface file).")
@click.option("--metric", "metrics", multiple=True, help="Dataset to export (default: all); repeatable.")
@click.option("--log", "log_scale", is_flag=True, help="Export each loss as log10 of it, named log10_<metric>.")
@debug_option
def export(surface_file: str, to: str, out: str | None, metrics: tuple[str, ...], log_scale: bool,
           debug: bool) -> None:
    """Write SURFACE_FILE's coordinates and metrics as a NumPy archive, a CSV table, a VTK grid or a web page."""
    from .export import export_surface

    click.echo(str(_guard(lambda: export_surface(surface_file, to, out, list(metrics) or None, log_scale), debug)))


@cli.command()
@click.argument("surface_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--epsilon", type=float, default=0.1, show_default=True,
              help="Loss threshold above the centre for basin width and area.")
@click.option("--radius", type=float,
              help="Radius of ε-sharpness (default: for each centre, the largest circle around it inside the grid).")
@debug_option
def info(surface_file: str, as_json: bool, epsilon: float, radius: float | None, debug: bool) -> None:
    """Schema, job, progress, minima, barriers, flatness and Hessian spectrum of SURFACE_FILE."""
    import json

    from .analysis.summary import format_summary, summarize

    summary = _guard(lambda: summarize(surface_file, epsilon=epsilon, radius=radius), debug)
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))


@cli.command()
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--final", type=click.Path(dir_okay=False), help="θ_final, the origin (default: the last checkpoint).")
@click.option("--components", "-k", type=int, default=4, show_default=True,
              help="Principal components for the Andrews curves and the radar chart.")
@click.option("--out", default="trajectory", show_default=True, help="Output stem or directory.")
@click.option("--format", "formats", multiple=True, type=click.Choice(["png", "pdf", "svg"]),
              help="Image format(s); repeatable.")
@click.option("--keep-statistics", is_flag=True, help="Include BatchNorm running statistics in the vectors.")
@debug_option
def trajectory(checkpoints: tuple[str, ...], final: str | None, components: int, out: str, formats: tuple[str, ...],
               keep_statistics: bool, debug: bool) -> None:
    """PCA projection, Andrews curves and radar chart of training CHECKPOINTS (paths or globs, in training order)."""
    from .errors import JobFileError
    from .plots import plot_trajectory
    from .models import expand_checkpoints
    from .trajectory import checkpoint_pca

    def _run() -> list[Any]:
        paths = expand_checkpoints(list(checkpoints), key="checkpoints")
        if components < 2:
            raise JobFileError(f"--components {components}: need at least 2")
        k = max(2, min(components, len(paths) - 1))
        result = checkpoint_pca(paths, final=final, k=k, skip_statistics=not keep_statistics)
        from pathlib import Path

        labels = [Path(p).stem for p in paths]
        return plot_trajectory(result.coordinates, labels, result.explained_variance_ratio, out,
                               formats=formats or ("png",))

    for p in _guard(_run, debug):
        click.echo(str(p))


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--nodes", type=int, default=1, show_default=True, help="Nodes to use.")
@click.option("--gpus-per-node", type=int, default=0, show_default=True, help="GPUs per node (one rank each); 0: CPU job.")
@click.option("--time", "time_limit", default="01:00:00", show_default=True, help="SLURM time limit.")
@click.option("--partition", help="SLURM partition (default: the cluster's).")
@click.option("--template", type=click.Choice(["auto", "single", "multi", "preempt", "array"]), default="auto",
              show_default=True, help="auto: single for one node, multi for more.")
@click.option("--cpus-per-task", type=int, help="CPUs (torch threads) per rank.")
@click.option("--ntasks-per-node", type=int, help="Ranks per node (default: one per GPU).")
@click.option("--checkpoints", type=click.Path(dir_okay=False), help="array: file with one checkpoint path per line.")
@click.option("--output", "-o", help="Surface file (array: the surfaces' directory).")
@click.option("--signal-seconds", type=int, default=None, help="preempt: SIGUSR1 this many seconds before the limit.")
@click.option("--job-name", help="SLURM job name.")
@click.option("--script", "script_path", type=click.Path(dir_okay=False), help="Also save the script to this file.")
@click.option("--submit", is_flag=True, help="Submit with sbatch and print the job id.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Passed on to mpiland run.")
@debug_option
def slurm(job_file: str, nodes: int, gpus_per_node: int, time_limit: str, partition: str | None, template: str,
          cpus_per_task: int | None, ntasks_per_node: int | None, checkpoints: str | None, output: str | None,
          signal_seconds: int | None, job_name: str | None, script_path: str | None, submit: bool,
          overrides: tuple[str, ...], debug: bool) -> None:
    """Write an sbatch script for JOB_FILE (printed, or submitted with --submit)."""
    import os
    from pathlib import Path

    from . import slurm as slurm_mod

    extra = [a for item in overrides for a in ("--set", item)]
    kwargs: dict[str, Any] = {}
    if signal_seconds is not None:
        kwargs["signal_seconds"] = signal_seconds
    text = _guard(lambda: slurm_mod.render_sbatch(
        job_file, nodes=nodes, gpus_per_node=gpus_per_node, time=time_limit, partition=partition, template=template,
        cpus_per_task=cpus_per_task, checkpoints=checkpoints, output=output, extra_args=extra,
        ntasks_per_node=ntasks_per_node, job_name=job_name, **kwargs), debug)
    if script_path:
        Path(script_path).write_text(text)
    if not submit:
        if not script_path:
            click.echo(text, nl=False)
        return
    job_id = _guard(lambda: slurm_mod.submit(text, workdir=os.getcwd()), debug)
    click.echo(f"submitted job {job_id}")


@cli.command()
@click.option("--model", "models", multiple=True, type=click.Choice(["mlp", "cnn", "resnet20"]),
              help="Model(s) to measure (default: all). Repeatable.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=0, help="Torch threads; 0 = the cores this process may use.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed repeats (the median is reported).")
@click.option("--points-per-pass", type=int, default=0, help="Points per batched pass; 0 = automatic.")
@click.option("--autocast", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True)
@click.option("--channels-last", is_flag=True, help="channels_last activations.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the forward pass.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
@debug_option
def bench(models: tuple[str, ...], device: str, threads: int, repeats: int, points_per_pass: int, autocast: str,
          channels_last: bool, compile_: bool, as_json: bool, debug: bool) -> None:
    """Time the engine against the bare forward-pass floor on built-in models."""
    import json

    import torch

    from .bench import CASES, bench_model, format_result
    from .engine import EngineOptions

    dev = _guard(lambda: resolve_device(device, 0), debug)
    torch.set_num_threads(threads_per_rank(threads, 1))
    options = EngineOptions(points_per_pass=points_per_pass, autocast=autocast, channels_last=channels_last,
                            compile=compile_)
    for name in models or tuple(CASES):
        result = bench_model(CASES[name], dev, repeats=repeats, options=options)
        click.echo(json.dumps(result.to_dict()) if as_json else format_result(result))


def main() -> None:
    """Console-script entry point: click's usage errors also end as one ``error: ...`` line, status 2."""
    # Before any command imports torch: on a busy machine idle OpenMP threads sleep unless the user chose
    # otherwise (``import mpiland`` has chosen already, once per process; mpiexec and srun ranks come here too).
    choose_wait_policy()
    try:
        status = cli.main(prog_name="mpiland", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # UsageError, BadParameter, FileError...
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
