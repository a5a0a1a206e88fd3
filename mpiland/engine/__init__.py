"""Evaluation engine: loss, accuracy and standard error at grid points, near the cost of a forward pass.

:class:`Evaluator` holds one model replica on one device and composes the parts:

- :mod:`.params`: the parameters as one flat buffer; a point origin + basis · c(a, b)
  is written with one fused ``addmv`` (``addmm`` into a K × n buffer for K points);
- :mod:`.placement`: the data, resident on the device when it fits the budget,
  streamed from (pinned) host memory otherwise;
- :mod:`.batching`: how many points per forward pass, and the vmapped pass;
- :mod:`.plan`: a plain Linear chain (an MLP) run by batched products instead, with its
  first layer's products with the resident data computed once;
- :mod:`.bn`: BatchNorm statistics recomputed at each point (``bn = "recompute"``);
- :mod:`.losses`: per-unit or batch-weighted losses, accuracy, their sums on the
  device (one host synchronisation per pass) and the metrics they give;
- :mod:`.metrics`: user metrics from the same forward pass (callables averaged like
  a loss, or update/compute objects).

Whatever the kind of directions, a point is origin + basis · c(a, b) with the
coefficient map of :class:`~mpiland.directions.Directions`; a path with a
comparison line (``variants``) is evaluated once per variant at every point. The
caller's model is never changed: the evaluator works on its own copy.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

import numpy as np
import torch

from ..curvature import Curvature, HessianSpectrum, axis_labels
from ..curvature import metric_names as curvature_metrics
from ..data import Split, Stream
from ..directions import Directions
from ..errors import DataError, ModelError, SettingsError
from ..layout import ParamLayout
from ..spec import HessianSpec, LossSpec
from ..surface.names import SPECTRUM, SPECTRUM_ORIGIN, spectrum_model
from ..surface.reader import Spectrum
from .batching import (MAX_POINTS_PER_PASS, MEASURED_SIZES, Forward, activation_bytes, call_model,
                       choose_points_per_pass, make_forward, memory_bound, vmap_failure)
from .bn import BatchNormRecompute, batchnorm_modules
from .checks import check_data_fits
from .losses import (BUILTIN_LOSSES, SUMS, LossFn, LossSums, mean_and_stderr, metric_names, resolve_loss,
                     split_metrics, wants_accuracy, wants_perplexity)
from .memory import check_evaluator_memory
from .metrics import Metric, checked, computed, fresh, resolve_metrics, updated
from .metrics import metric_names as user_metric_names
from .params import FlatParameters, coefficient_columns
from .placement import (BatchSplit, DeviceSplit, batch_bytes, fits, indexed_batches, place_split, place_stream,
                        shard_stream, synchronize)
from .plan import ChainPlan
from ..shard import Shard, ordered_total

Placed = DeviceSplit | BatchSplit
T = TypeVar("T")

__all__ = ["AUTOCAST", "BUILTIN_LOSSES", "MAX_POINTS_PER_PASS", "EngineOptions", "Evaluator", "metric_names", "resolve_loss",
           "synchronize", "wants_accuracy"]

log = logging.getLogger("mpiland")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
SUM_COLUMNS = SUMS + 3
"""Columns of :meth:`~.losses.LossSums.result`: the sums, then the unit, batch and sample counts."""
EPILOGUE_POINTS = 16
"""At most this many points' outputs wait for one loss epilogue (:meth:`Evaluator._evaluate`)."""


@dataclass(frozen=True)
class EngineOptions:
    """How points are evaluated: batching of points, mixed precision, memory layout, compilation."""

    points_per_pass: int = 0
    batch_memory_mb: float = 512.0
    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False


class Evaluator:
    """Holds one model replica, its flat parameter buffer, the directions and the data on one device."""

    def __init__(self, model: torch.nn.Module, directions: Directions, splits: list[Split | Stream], loss: LossSpec,
                 device: torch.device, *, dtype: torch.dtype = torch.float32, batch_size: int = 512,
                 memory_budget_mb: float = 1024.0, mode: str = "eval", options: EngineOptions | None = None,
                 bn_data: torch.Tensor | None = None, hessian: HessianSpec | None = None,
                 copy_model: bool = True, loss_fn: LossFn | None = None,
                 metrics: Mapping[str, Any] | None = None, sharing: int = 1) -> None:
        """``bn_data``: training inputs for ``bn = "recompute"``; ``hessian``: curvature at the origin and,
        with ``enabled``, at every point; ``copy_model`` False hands the model over instead of copying it;
        ``loss_fn``: a user loss callable (else ``loss.name`` names it); ``metrics``: name -> user metric
        (:mod:`.metrics`; None: ``loss.metrics``); ``sharing``: ranks whose evaluators share the device's memory
        (checked up front, :mod:`.memory`)."""
        self.options = options or EngineOptions()
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.builtin_loss = loss_fn is None and loss.name in BUILTIN_LOSSES
        self.loss_fn = resolve_loss(loss) if loss_fn is None else loss_fn
        if not self.builtin_loss:
            self.loss_fn = checked("the loss", self.loss_fn)
        self.user_metrics: list[Metric] = resolve_metrics(loss.metrics if metrics is None else metrics)
        self._metric_fns = [checked(f"metric {m.name!r}", m.fn) for m in self.user_metrics if not m.stateful]
        self._stateful = [m for m in self.user_metrics if m.stateful]
        self.split_names = [s.name for s in splits]
        self.directions = directions
        # Before anything is allocated: a job the device cannot hold is refused in one sentence.
        self.memory = check_evaluator_memory(model, directions, splits, dtype=dtype, device=device,
                                             points_per_pass=self.options.points_per_pass,
                                             batch_memory_mb=self.options.batch_memory_mb,
                                             memory_budget_mb=memory_budget_mb, bn_data=bn_data, hessian=hessian,
                                             sharing=sharing)
        # Half-precision weights: θ* is read in float32 (FlatParameters rounds each point into the model).
        self.model = (copy.deepcopy(model) if copy_model else model).to(
            device=device, dtype=torch.float32 if dtype.itemsize < 4 else dtype)
        self.model.train(mode == "train")
        self.layout = ParamLayout.from_model(self.model, directions.layout.states)
        if self.layout != directions.layout:
            raise ModelError("the directions were made for another model (parameter names or shapes differ)")
        self.params = FlatParameters(self.model, self.layout, directions, device, dtype)
        self.flat = self.params.flat
        self.bn: BatchNormRecompute | None = None
        if bn_data is not None and batchnorm_modules(self.model):
            x = bn_data.to(dtype) if bn_data.is_floating_point() else bn_data
            self.bn = BatchNormRecompute(self.model, x.to(device), batch_size)
        self._buffers = [b for b in self.model.buffers() if b.is_floating_point() or b.dtype == torch.long]
        self._buffers0 = [b.clone() for b in self._buffers]
        self._restore_buffers = mode == "train" and bool(self._buffers)
        self.data = self._place_data(splits, memory_budget_mb)
        self.accuracy = wants_accuracy(loss, self.data[0].first_batch(batch_size, device)[1])
        for d in self.data:
            check_data_fits(self.model, d, self.loss_fn, loss.name, self.builtin_loss, self.accuracy,
                            self.batch_size, self.device, self._metric_fns)
        self._check_metric_objects()
        self.fused_loss = self.builtin_loss and loss.name == "cross_entropy" and all(map(_integer_targets, self.data))
        self.epilogue_work: dict[Any, torch.Tensor] = {}
        """The fused loss's intermediates, kept from pass to pass (:func:`~.losses.cross_entropy_terms`)."""
        self.plan = self._make_plan(mode, memory_budget_mb)
        self.perplexity = wants_perplexity(loss, self.builtin_loss)
        self.base_metrics = metric_names(self.split_names, self.accuracy, self.perplexity)
        self.base_metrics += user_metric_names(self.split_names, self._ordered_metrics())
        if hessian is not None:
            self.base_metrics += curvature_metrics(hessian)
        self.metrics = [v + m for v in directions.variants for m in self.base_metrics]
        self.curvature = None
        if hessian is not None:
            # Resident splits are already on the device: the operators share them.
            wanted = set(hessian.splits) or set(self.split_names)  # only the splits curvature is taken on
            self.curvature = Curvature(self.model, {d.name: _tensors(d) for d in self.data if d.name in wanted},
                                       self.loss_fn, hessian, batch_size, device, dtype,
                                       warm_start=hessian.warm_start)
        self.autocast = AUTOCAST.get(self.options.autocast)
        self.shard: Shard | None = None
        self._batch_means: dict[str, list[bool]] = {}
        self.fallback_reason = ""
        self._epilogue_points: int | None = None
        self.points_per_pass = 1
        self.use_points_per_pass(self._choose_points_per_pass(mode))

    def _make_plan(self, mode: str, memory_budget_mb: float) -> ChainPlan | None:
        """The batched-product plan of a plain Linear chain (:mod:`.plan`), checked against the model at the
        origin, with the first layer's products for the data kept on the device in what the budget leaves;
        None for other models, and under autocast, compile or per-point BatchNorm statistics."""
        if (mode != "eval" or self.bn is not None or self.options.autocast != "none" or self.options.compile
                or self.dtype.itemsize < 4):  # the plan's float32 products do not take bf16/fp16 inputs
            return None
        plan = ChainPlan.build(self.model, self.layout)
        if plan is None:
            return None
        plan.prepare(self.params.theta0, self.params.vectors)
        origin = torch.zeros(1, self.directions.dims, device=self.device, dtype=self.dtype)
        x = self._probe_batch(2)
        with torch.inference_mode():
            ref = call_model(self.model, x)
            out = plan.forward(self.params.theta0.unsqueeze(0), coefficient_columns(origin), 1, x)[0]
        if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-3, atol=1e-5):
            log.info("the model's Linear chain does not reproduce its own output; running it as a module")
            return None
        kept = [b for d in self.data for b in _kept_batches(d, self.batch_size, self.device)]
        left = memory_budget_mb * 2**20 - sum(batch_bytes(x, y) for x, y in kept)
        used = plan.precompute([x for x, _ in kept], left)
        log.debug("Linear chain of %d layers run by batched products; first layer precomputed for %.1f MiB of "
                  "batches", len(plan.layers), used / 2**20)
        return plan

    def use_shard(self, shard: Shard | None) -> None:
        """Evaluate only this rank's batches of every split from now on, as rank ``shard.rank`` of a point
        group whose ranks all set the same points (:mod:`mpiland.shard`; collective over the group at every pass).
        None: every batch again. Streamed splits of map-style datasets get a loader over their own batches."""
        if shard is not None and shard.size > 1:
            if self._stateful:
                raise SettingsError(f"metric {self._stateful[0].name!r} is an update/compute object, whose state "
                                    "a point group cannot split over its ranks; use run.group_size = 1 or give it "
                                    "as a callable (outputs, targets) -> values")
            for d in self.data:
                if isinstance(d, BatchSplit):
                    shard_stream(d, shard)
            self._batch_means = {d.name: self._gives_batch_means(d) for d in self.data}
        else:
            shard = None
        self.shard = shard
        if self.curvature is not None:
            self.curvature.use_shard(shard)

    def _gives_batch_means(self, d: Placed) -> list[bool]:
        """Per loss function (the loss, then callable metrics): whether it returns one mean per batch on this
        split's first batch, so that a later one-sample batch summed alone counts as a batch mean too."""
        fns = ([] if self.builtin_loss else [self.loss_fn]) + list(self._metric_fns)
        if not fns:
            return [False] * (1 + len(self._metric_fns))
        x, y = d.first_batch(self.batch_size, self.device)
        with torch.inference_mode():
            out = call_model(self.model, x)
            means = [torch.as_tensor(fn(out, y)).numel() == 1 and int(y.shape[0]) > 1 for fn in fns]
        return ([False] if self.builtin_loss else []) + means

    def _check_metric_objects(self) -> None:
        """Try every update/compute metric on one batch at set-up, so a broken one is a MetricError on every
        rank before any point, not an error on one rank in the middle of a run."""
        if not self._stateful:
            return
        x, y = self.data[0].first_batch(self.batch_size, self.device)
        training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = call_model(self.model, x)
        finally:
            self.model.train(training)
        for m in self._stateful:
            obj = fresh(m, self.device)
            updated(m, obj, out, y)
            computed(m, obj)

    def _ordered_metrics(self) -> list[Metric]:
        """The user metrics in the order their values are produced: callables, then update/compute objects."""
        return [m for m in self.user_metrics if not m.stateful] + self._stateful

    def _place_data(self, splits: list[Split | Stream], memory_budget_mb: float) -> list[Placed]:
        """Every split where the engine reads it: tensor splits together, then loaders in what the budget leaves."""
        tensors = [s for s in splits if isinstance(s, Split)]
        resident = fits(tensors, memory_budget_mb)
        left = memory_budget_mb * 2**20 - (sum(s.nbytes for s in tensors) if resident else 0)
        data: list[Placed] = []
        for s in splits:
            if isinstance(s, Split):
                data.append(place_split(s, self.device, self.dtype, resident, self.options.channels_last))
            else:
                placed = place_stream(s, self.device, self.dtype, left, self.options.channels_last)
                left -= sum(batch_bytes(x, y) for x, y in placed.kept)
                data.append(placed)
        return data

    @property
    def data_digests(self) -> dict[str, str]:
        """Split name -> digest of the batches of each split read from a loader (tensor splits are digested
        by the surface identity from their host tensors)."""
        return {d.name: d.digest for d in self.data if isinstance(d, BatchSplit)}

    @property
    def resident(self) -> bool:
        """Whether every split sits on the device for the whole run."""
        return all(d.resident for d in self.data)

    # -- points per pass -----------------------------------------------------------------

    def _probe_batch(self, n: int | None = None) -> Any:
        return self.data[0].first_inputs(n or self.batch_size, self.device)

    def max_points_per_pass(self) -> int:
        """The largest K whose parameter copies and activations fit ``batch_memory_mb`` (at most 64)."""
        return memory_bound(self.layout, self.flat.element_size(), activation_bytes(self.model, self._probe_batch()),
                            self.options.batch_memory_mb)

    def _choose_points_per_pass(self, mode: str) -> int:
        """K for this run (:func:`~mpiland.engine.batching.choose_points_per_pass`); logs why it is 1."""
        k, self.fallback_reason = choose_points_per_pass(
            self.options.points_per_pass, self.device, recompute_bn=self.bn is not None, mode=mode,
            bound=self.max_points_per_pass,
            vmap_check=lambda: vmap_failure(self.model, self.layout, self.params.theta0, self._probe_batch(2)),
            measure=self._measure_points_per_pass if self.plan is not None else None)
        if self.fallback_reason:
            log.info("evaluating one point per pass: %s", self.fallback_reason)
        return k

    def _measure_points_per_pass(self) -> int:
        """The fastest K of :data:`~.batching.MEASURED_SIZES` (to the memory bound), timed on the first batch
        (for a plan, whose values do not depend on K); leaves the evaluator at K = 1."""
        x, y = self.data[0].first_batch(self.batch_size, self.device)
        bound = self.max_points_per_pass()
        timings: dict[int, float] = {}
        for k in [k for k in MEASURED_SIZES if k <= bound] or [1]:
            self.use_points_per_pass(k)
            coefficients = np.zeros((k, self.directions.dims))

            def one_pass() -> None:
                self._set_points(coefficients)
                with torch.inference_mode():
                    LossSums(self.loss_fn, self.builtin_loss, self.accuracy, k, self.device,
                             self.fused_loss).add(self.forward(k, x), y)

            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                one_pass()
                synchronize(self.device)
                times.append(time.perf_counter() - t0)
            timings[k] = sorted(times[1:])[1] / k  # the median of three, after one warm-up
        self.use_points_per_pass(1)
        best = min(timings, key=lambda k: timings[k])
        log.debug("points per pass measured on the first batch: %s ms/point; taking %d",
                 ", ".join(f"{k}: {t * 1e3:.3g}" for k, t in timings.items()), best)
        return best

    def use_points_per_pass(self, k: int, compile_: bool | None = None) -> None:
        """Evaluate ``k`` points per forward pass from now on (1: one point at a time on the model itself,
        or on the rows of a plan)."""
        self.points_per_pass = k
        self.forward: Forward
        plan = self.plan
        self.params.reserve(k, rows=plan is not None, start=plan.first_column if plan is not None else 0)
        if plan is not None:
            params = self.params

            def planned(n: int, x: Any) -> torch.Tensor:
                assert params.rows is not None
                return plan.forward(params.rows, params.row_columns, n, x)

            self.forward = planned
            return
        self.forward = make_forward(self.model, self.layout, k, self.params.row_views,
                                    self.options.compile if compile_ is None else compile_)

    def batched_pass_works(self) -> bool:
        """Whether vmap runs this model correctly (for a points-per-pass taken from a file)."""
        if self.points_per_pass == 1 or self.plan is not None:
            return True
        return not vmap_failure(self.model, self.layout, self.params.theta0, self._probe_batch(2))

    # -- setting points ------------------------------------------------------------------

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model with one fused update."""
        self.params.set_point(coefficients)
        if self.bn is not None:
            self.bn()

    def _set_points(self, coefficients: np.ndarray) -> int:
        if self.params.rows is None:
            self.set_point(coefficients[0])
            return 1
        return self.params.set_rows(coefficients)

    def reset(self) -> None:
        """Put θ* back into the model."""
        self.params.reset()

    # -- evaluating ----------------------------------------------------------------------

    def _pass(self, coefficients: np.ndarray, per_split: Callable[[Evaluator, Placed, int], T]) -> tuple[int, list[T]]:
        """Set the points of ``coefficients`` (at most points_per_pass rows) and run ``per_split(self, split, k)``
        on every split (:func:`_split_sums`, or :func:`_outputs` for a shared epilogue); return k and the
        results. Buffers a train-mode pass changes are put back afterwards."""
        k = self._set_points(coefficients)
        with torch.inference_mode():
            parts = [per_split(self, d, k) for d in self.data]
        if self._restore_buffers:
            torch._foreach_copy_(self._buffers, self._buffers0)
        return k, parts

    def evaluate_points(self, coords: np.ndarray, groups: list[slice] | None = None,
                        stop: Callable[[], bool] | None = None,
                        links: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluate each row of grid ``coords`` (n × dims); return metric arrays and per-point seconds.

        ``groups``: consecutive slices of ``coords`` from 0, one forward pass each (at
        most points_per_pass points; by default passes of points_per_pass). ``stop``:
        asked before each pass that does not continue a chain; once it says True the arrays
        cover only the points evaluated. ``links``: per point, whether a warm-started
        curvature takes its start from the point before it (:func:`mpiland.grid.chain_links`);
        None: every point starts cold. Every variant of the path (the path, its comparison
        line) is evaluated at each point; its metrics carry the variant's prefix and the seconds add up.
        """
        variants = self.directions.variants
        values, seconds = self._evaluate([self.directions.coefficients(coords, v) for v in variants], groups, stop,
                                         links)
        return {v + m: a for v, part in zip(variants, values) for m, a in part.items()}, seconds

    def evaluate_coefficients(self, coefficients: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluate origin + basis · c for each row c of ``coefficients`` (n × m), in passes of points_per_pass."""
        values, seconds = self._evaluate([coefficients], None, None, None)
        return values[0], seconds

    def _evaluate(self, sets: list[np.ndarray], groups: list[slice] | None, stop: Callable[[], bool] | None,
                  links: np.ndarray | None) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """Metric arrays per coefficient set (each n × m, the same points) and per-point seconds.

        Passes run as the groups say; their outputs wait, up to :attr:`epilogue_points`
        points, for one loss epilogue over all of them (a window), so a small model
        does not pay the epilogue's kernels at every point. The sums stay on the device
        and come to the host in one copy at the end, where the metrics of all points are
        computed at once. Seconds: a window's wall time shared by its points, the
        device synchronised at the end of the call (so on an accelerator the whole
        call's time is what is shared, in proportion to the windows' host times).
        """
        n = sets[0].shape[0]
        k = self.points_per_pass
        groups = groups if groups is not None else [slice(a, min(a + k, n)) for a in range(0, n, k)]
        curvature = self.curvature is not None and self.curvature.spec.enabled
        window = self.epilogue_points
        sums: list[list[torch.Tensor]] = [[] for _ in sets]
        objects: list[list[list[np.ndarray]]] = [[] for _ in sets]
        curv: list[list[dict[str, np.ndarray]]] = [[] for _ in sets]
        waiting: list[list[tuple[int, list[list[Outputs]]]]] = [[] for _ in sets]
        seconds = np.zeros(n)
        start = done = 0
        t0 = t_start = time.perf_counter()

        def close_window() -> None:
            nonlocal start, t0
            for i in range(len(sets)):
                if waiting[i]:
                    s, o = _window_sums(self, waiting[i])
                    sums[i].append(s)
                    objects[i].append(o)
                    waiting[i] = []
            t1 = time.perf_counter()
            seconds[start:done] = (t1 - t0) / max(done - start, 1)
            start, t0 = done, t1

        for g in groups:
            # a chain is evaluated whole: stopping inside it would start its rest cold on resume
            if stop is not None and not (links is not None and curvature and links[g.start]) and stop():
                break
            for i, coefficients in enumerate(sets):
                group = coefficients[g]
                if window > 1:
                    waiting[i].append(self._pass(group, _outputs))
                else:
                    _, parts = self._pass(group, _split_sums)
                    sums[i].append(torch.stack([p[0] for p in parts]))
                    objects[i].append([p[1] for p in parts])
                if curvature:
                    curv[i].append(_curvature(self, group, links[g] if links is not None else None, i))
            done = g.stop
            if done - start >= window:
                close_window()
        if done > start:
            close_window()
        synchronize(self.device)
        if done and self.device.type != "cpu":
            seconds[:done] *= (time.perf_counter() - t_start) / max(seconds[:done].sum(), 1e-12)
        out = []
        for i in range(len(sets)):
            metrics: dict[str, np.ndarray] = {}
            if done:
                host = torch.cat(sums[i], dim=2).cpu().numpy()
                per_split = [np.concatenate([o[j] for o in objects[i]], axis=1) for j in range(len(self.data))]
                metrics = _metrics(self.split_names, host, self.accuracy, self._ordered_metrics(), per_split,
                                   self.perplexity)
                for c in curv[i][:1]:
                    metrics.update({m: np.concatenate([part[m] for part in curv[i]]) for m in c})
            out.append({m: np.asarray(metrics.get(m, np.zeros(0)), dtype=np.float64) for m in self.base_metrics})
        return out, seconds[:done]

    @property
    def epilogue_points(self) -> int:
        """Points whose outputs wait for one loss epilogue: up to :data:`EPILOGUE_POINTS` while their outputs on
        every split fit a quarter of ``batch_memory_mb``; 1 (each pass its own) for streamed data and with
        curvature at every point."""
        if self._epilogue_points is None:
            self._epilogue_points = 1
            if all(d.resident for d in self.data) and not (self.curvature is not None and self.curvature.spec.enabled):
                x, _ = self.data[0].first_batch(self.batch_size, self.device)
                with torch.inference_mode():
                    out = call_model(self.model, x)
                rows = max(int(out.shape[0]), 1) if out.dim() else 1
                per_sample = 4 * max(out.numel() // rows, 1)
                samples = sum(_samples(d) for d in self.data)
                fit = int(self.options.batch_memory_mb * 2**20 / 4 // max(per_sample * samples, 1))
                self._epilogue_points = max(1, min(EPILOGUE_POINTS, fit))
        return self._epilogue_points

    def origin_curvature(self) -> dict[str, Any]:
        """Trace and directional curvatures at the origin (root attributes of a new file) and, with
        ``hessian.spectrum``, the spectra under :data:`~mpiland.surface.names.SPECTRUM` (subgroup name ->
        :class:`~mpiland.surface.reader.Spectrum`: the file's ``spectrum/`` group)."""
        if self.curvature is None:
            return {}
        zero = np.zeros(self.directions.dims)
        self.set_point(zero)
        own = self.params.vectors[self.directions.rows("")]  # the path's own axes, not a comparison block
        out: dict[str, Any] = dict(self.curvature.at_origin(self.flat, own,
                                                            axis_labels(self.directions.block_size)))
        if self.curvature.spec.spectrum != "none":
            out[SPECTRUM] = self.spectra()
            self.set_point(zero)
        return out

    def spectra(self) -> dict[str, Spectrum]:
        """The Hessian spectrum at the origin and, with ``hessian.spectrum = "models"``, at each model of the
        path (origin + basis · c at the model's grid coordinates; a model at the origin shares its spectrum).

        Leaves the model at the last point it visited."""
        assert self.curvature is not None
        models = self.directions.models
        dims = len(models[0][1]) if models else self.directions.dims
        split = self.curvature.spectrum_split
        self.set_point(np.zeros(self.directions.dims))
        origin = self.curvature.spectrum(self.flat)
        out = {SPECTRUM_ORIGIN: _spectrum_record(origin, "origin", np.zeros(dims), split)}
        if self.curvature.spec.spectrum != "models":
            return out
        for i, (label, position) in enumerate(models):
            coefficients = self.directions.coefficients(np.array([position], dtype=np.float64))[0]
            if np.any(coefficients != 0):
                self.set_point(coefficients)
                result = self.curvature.spectrum(self.flat)
            else:
                result = origin
            out[spectrum_model(i)] = _spectrum_record(result, label, np.asarray(position, dtype=np.float64), split)
        return out


def _spectrum_record(result: HessianSpectrum, label: str, coordinates: np.ndarray, split: str) -> Spectrum:
    """A computed spectrum as the file stores it (the torch-free record of the surface reader)."""
    quad, groups = result.quadrature, result.groups
    return Spectrum(label=label, coordinates=coordinates, split=split, n=result.n, probes=quad.probes,
                    steps=quad.steps, distribution=result.distribution, width=result.density.width,
                    nodes=quad.nodes, weights=quad.weights, grid=result.density.grid,
                    density=result.density.values, top=result.top, groups=[g.name for g in groups],
                    group_size=np.array([g.size for g in groups], dtype=np.int64),
                    group_max=np.array([g.lam_max for g in groups], dtype=np.float64),
                    group_min=np.array([g.lam_min for g in groups], dtype=np.float64),
                    trace=result.trace.trace, trace_stderr=result.trace.stderr, top_converged=result.top_converged,
                    hvps=result.hvps, seconds=result.seconds)


def _curvature(ev: Evaluator, coefficients: np.ndarray, links: np.ndarray | None, chain: int
               ) -> dict[str, np.ndarray]:
    """Hessian extreme eigenvalues at each point of a group (one point at a time: HVPs need autograd).

    After a one-point pass the model already holds the point (and its recomputed
    BatchNorm statistics); a batched pass wrote its K×n buffer, so each point is set here.
    ``links``: whether each point continues the chain of the point before it (warm start),
    ``chain``: the coefficient set's number, one chain of starts per set.
    """
    assert ev.curvature is not None
    rows = []
    for j, c in enumerate(coefficients):
        if ev.params.rows is not None:
            ev.set_point(c)
        rows.append(ev.curvature.at_point(ev.flat, bool(links is not None and links[j]), chain))
    return {m: np.array([r[m] for r in rows]) for m in rows[0]}


def _kept_batches(d: Placed, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of a split that stay on the device for the whole run (none for streamed data)."""
    if isinstance(d, DeviceSplit):
        return list(d.batches(batch_size, device)) if d.resident else []
    return [(x, y) for x, y in d.kept if isinstance(x, torch.Tensor)]


def _samples(d: Placed) -> int:
    """Samples of a split."""
    return int(d.inputs.shape[0]) if isinstance(d, DeviceSplit) else d.samples


def _integer_targets(d: Placed) -> bool:
    """Whether a split's targets are integer labels. For the built-in cross-entropy,
    :func:`~.checks.check_data_fits` has then made sure they are one class index per sample in range of
    the outputs (a loader's split over all its batches), which the fused epilogue relies on."""
    if isinstance(d, DeviceSplit):
        return not d.targets.is_floating_point()
    return d.labels is not None


def _tensors(d: Placed) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's inputs and targets as whole tensors (what the curvature operators read)."""
    if isinstance(d, DeviceSplit):
        return d.inputs, d.targets
    inputs = [x for x, _ in d.kept if isinstance(x, torch.Tensor)]
    if d.kept and len(inputs) == len(d.kept):
        return torch.cat(inputs), torch.cat([y for _, y in d.kept])
    raise DataError(f"data split {d.name!r}: curvature needs the split as tensors in memory; pass (inputs, targets) "
                    "tensors or raise memory_budget_mb so that the loader's batches are kept")


def _metrics(split_names: list[str], sums: np.ndarray, accuracy: bool, user: list[Metric],
             objects: list[np.ndarray], perplexity: bool = False) -> dict[str, np.ndarray]:
    """Metric arrays of every split from one pass's sums (splits × 1+metrics × k × sums) and object values."""
    out: dict[str, np.ndarray] = {}
    for name, split, values in zip(split_names, sums, objects):
        out.update(split_metrics(name, split[0], accuracy, perplexity))
        callables = [m for m in user if not m.stateful]
        for m, rows in zip(callables, split[1:]):
            out[f"{name}_{m.name}"], out[f"{name}_{m.name}_stderr"] = mean_and_stderr(rows)
        for m, v in zip([m for m in user if m.stateful], values):
            out[f"{name}_{m.name}"] = v
    return out


def _forward(ev: Evaluator, k: int, x: Any) -> torch.Tensor:
    """Outputs (k, batch, ...) of the k points now set, in float32 under autocast."""
    if ev.autocast is not None:
        with torch.autocast(ev.device.type, dtype=ev.autocast):
            out = ev.forward(k, x)
        return out.float()
    return ev.forward(k, x)


Outputs = tuple[int, torch.Tensor, torch.Tensor]
"""One batch's number in its split, the outputs (k, batch, ...) of the points set, and its targets."""


def _outputs(ev: Evaluator, d: Placed, k: int) -> list[Outputs]:
    """The outputs of the k points now set on every batch of a split this rank evaluates, with the targets."""
    return [(i, _forward(ev, k, x), y) for i, x, y in indexed_batches(d, ev.batch_size, ev.device, ev.shard)]


def _split_sums(ev: Evaluator, d: Placed, k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Per point the loss and metric sums over one split, each batch's outputs consumed as it comes."""
    batches = ((i, _forward(ev, k, x), y) for i, x, y in indexed_batches(d, ev.batch_size, ev.device, ev.shard))
    return _sums(ev, d.name, batches, k)


def _window_sums(ev: Evaluator, passes: list[tuple[int, list[list[Outputs]]]]
                 ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Sums (splits × 1+metrics × points × sums) and update/compute metric values of several passes at once:
    each batch's outputs of all their points, stacked, go through the epilogue once."""
    k = sum(n for n, _ in passes)
    parts = []
    for j, d in enumerate(ev.data):
        batches = zip(*(outs[j] for _, outs in passes))
        parts.append(_sums(ev, d.name, ((b[0][0], _stack_points([o for _, o, _ in b]), b[0][2]) for b in batches), k))
    return torch.stack([p[0] for p in parts]), [p[1] for p in parts]


def _stack_points(parts: list[torch.Tensor]) -> torch.Tensor:
    """The outputs of several passes as one tensor (points, batch, ...) in the memory layout they came in: a
    plan returns (k, batch, C) views of (k, C, batch) tensors, and the epilogue's sums over C round by
    layout, so a point's values must not depend on whether its pass shared an epilogue."""
    if len(parts) == 1:
        return parts[0]
    if parts[0].dim() == 3 and parts[0].stride(1) == 1 and not parts[0].is_contiguous():
        return torch.cat([p.transpose(1, 2) for p in parts]).transpose(1, 2)
    return torch.cat(parts)


def _sums(ev: Evaluator, split: str, batches: Iterable[Outputs], k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Per point the loss and metric sums over a split's batches (number, outputs (k, batch, ...), targets) (see
    :class:`~mpiland.engine.losses.LossSums`), and the values of the update/compute metrics (metrics × k)."""
    if ev.shard is not None:
        return _group_sums(ev, ev.shard, split, batches, k)
    sums = [LossSums(ev.loss_fn, ev.builtin_loss, ev.accuracy, k, ev.device, ev.fused_loss, ev.epilogue_work)]
    sums += [LossSums(fn, False, False, k, ev.device) for fn in ev._metric_fns]
    objects = [[fresh(m, ev.device) for _ in range(k)] for m in ev._stateful]
    for _, out, y in batches:
        for s in sums:
            s.add(out, y)
        for m, copies in zip(ev._stateful, objects):
            for i, obj in enumerate(copies):
                updated(m, obj, out[i], y)
    values = np.array([[computed(m, obj) for obj in copies] for m, copies in zip(ev._stateful, objects)])
    return torch.stack([s.result() for s in sums]), values.reshape(len(objects), k)


def _group_sums(ev: Evaluator, shard: Shard, split: str, batches: Iterable[Outputs], k: int
                ) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`_sums` in a point group: each of this rank's batches summed on its own, the group's per-batch
    sums gathered and added in batch order (:mod:`mpiland.shard`), so every rank of the group holds the sums one
    rank makes over all batches, bit for bit (update/compute metrics are refused by :meth:`Evaluator.use_shard`)."""
    means = ev._batch_means[split]
    parts = []
    for i, out, y in batches:
        sums = [LossSums(ev.loss_fn, ev.builtin_loss, ev.accuracy, k, ev.device, ev.fused_loss, ev.epilogue_work,
                         batch_means=i > 0 and means[0])]
        sums += [LossSums(fn, False, False, k, ev.device, batch_means=i > 0 and m)
                 for fn, m in zip(ev._metric_fns, means[1:])]
        for s in sums:
            s.add(out, y)
        parts.append((i, torch.stack([s.result() for s in sums])))
    stacked = torch.stack([p for _, p in parts]).cpu().numpy() if parts else np.zeros(0)  # one copy
    host = [(i, h) for (i, _), h in zip(parts, stacked)]
    total = ordered_total(shard.in_order(host), (1 + len(ev._metric_fns), k, SUM_COLUMNS))
    return torch.from_numpy(total).to(ev.device), np.zeros((0, k))
