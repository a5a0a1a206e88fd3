"""Several grid points per forward pass: how many (K), and the forward pass that evaluates them.

The parameters of K points sit in the rows of a K × n buffer and the model runs
once over them with ``torch.func.vmap`` + ``functional_call``, which keeps a small
model from leaving most of a GPU idle. Values depend on K at rounding level under
vmap, so there K is a pure function of the job, the model and the device type,
never of timings. A plain Linear chain runs through :mod:`.plan` instead, whose
values do not depend on K on a CPU; there the automatic K is measured (the fastest
of :data:`MEASURED_SIZES` on the first batch). Either way K is stored in the
surface file and a resume takes it from there, so it never changes between the
runs or ranks of one surface. Models vmap cannot run (in-place buffer updates,
data-dependent control flow) fall back to one point per pass, with the reason logged.

A model may return a structured output (a HuggingFace ``ModelOutput`` such as
``CausalLMOutputWithPast``, or a tuple): its logits (``.logits``, else the first
element) are the outputs, everywhere the engine calls the model (:func:`outputs_of`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..layout import ParamLayout
from ..models import outputs_of

MAX_POINTS_PER_PASS = 64
MEASURED_SIZES = (1, 4, 16, 64)
"""The points per pass a CPU run of a Linear chain times at set-up (up to the memory bound)."""

Forward = Callable[[int, Any], torch.Tensor]
"""``forward(k, x)``: outputs of the k points now set, shape (k, batch, ...); x a tensor or a dict of them."""


def call_model(model: Callable[..., Any], x: Any) -> Any:
    """The outputs of ``model(x)``, or of ``model(**x)`` for a dict batch's keyword inputs (:func:`outputs_of`)."""
    return outputs_of(model(**x) if isinstance(x, dict) else model(x))


def activation_bytes(model: nn.Module, x: Any) -> int:
    """Bytes of all module outputs for one batch of one point (an upper bound of live activations)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.element_size() * out.nelement()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.inference_mode():
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return total


def memory_bound(layout: ParamLayout, element_size: int, activations: int, budget_mb: float) -> int:
    """The largest K whose parameter copies and activations fit ``budget_mb`` (at most MAX_POINTS_PER_PASS)."""
    per_point = layout.numel * element_size + activations
    return max(1, min(MAX_POINTS_PER_PASS, int(budget_mb * 2**20 // max(per_point, 1))))


def vmapped(model: nn.Module, layout: ParamLayout) -> Callable[[dict[str, torch.Tensor], Any], torch.Tensor]:
    """``f(params, x)`` running ``model`` once per row of the batched ``params`` (buffers shared)."""
    in_flat = set(layout.names)
    buffers = {n: b for n, b in model.named_buffers() if n not in in_flat}

    def one(params: dict[str, torch.Tensor], x: Any) -> torch.Tensor:
        if isinstance(x, dict):
            return outputs_of(torch.func.functional_call(model, (params, buffers), (), x))
        return outputs_of(torch.func.functional_call(model, (params, buffers), (x,)))

    return torch.func.vmap(one, in_dims=(0, None))


def check_vmap(model: nn.Module, layout: ParamLayout, theta: torch.Tensor, x: Any) -> None:
    """Raise unless vmap runs ``model`` and reproduces its plain output at ``theta`` (the flat parameters, taken
    to the model's own dtype: float32 for bf16 weights, see :class:`~.params.FlatParameters`)."""
    own = next(model.parameters(), None)
    if own is not None and own.is_floating_point() and theta.dtype != own.dtype:
        theta = theta.to(own.dtype)
    params = {n: v.unsqueeze(0).expand(2, *v.shape) for n, v in zip(layout.names, layout.views(theta))}
    with torch.inference_mode():
        out = vmapped(model, layout)(params, x)
        ref = call_model(model, x)
    # Loose on purpose: this catches a model vmap runs wrongly, not TF32 rounding.
    if not torch.allclose(out[0].float(), ref.float(), rtol=1e-2, atol=1e-3):
        raise RuntimeError("batched and single outputs differ")


def vmap_failure(model: nn.Module, layout: ParamLayout, theta: torch.Tensor, x: Any) -> str:
    """Why vmap cannot run this model ("" when it can)."""
    try:
        check_vmap(model, layout, theta, x)
        return ""
    except Exception as exc:  # any failure of the user's model under vmap means: one point per pass
        return f"vmap cannot run this model ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def make_forward(model: nn.Module, layout: ParamLayout, k: int, rows: Callable[[int], dict[str, torch.Tensor]],
                 compile_: bool) -> Forward:
    """The forward pass for ``k`` points per pass; ``rows(k)`` gives the batched parameter views."""
    if k > 1:
        fn: Callable[..., torch.Tensor] = vmapped(model, layout)
        if compile_:
            fn = torch.compile(fn)

        def batched(n: int, x: Any) -> torch.Tensor:
            return fn(rows(n), x)

        return batched
    plain: Callable[..., torch.Tensor] = torch.compile(model) if compile_ else model

    def single(_n: int, x: Any) -> torch.Tensor:
        return call_model(plain, x).unsqueeze(0)

    return single


def choose_points_per_pass(requested: int, device: torch.device, *, recompute_bn: bool, mode: str,
                           bound: Callable[[], int], vmap_check: Callable[[], str],
                           measure: Callable[[], int] | None = None) -> tuple[int, str]:
    """K for a run and, when it falls back to 1, the reason.

    ``requested``: the job's K (0 automatic, 1 one point per pass). Automatic is, on a
    CPU, ``measure()`` where given (only for a Linear chain's plan, whose values do not
    depend on K, and which never runs in train mode or with per-point BatchNorm statistics)
    and otherwise one point per pass, where a vmapped pass rarely wins (a vmapped
    convolution becomes a grouped one); on a GPU the memory ``bound()``, where a small
    model leaves the device idle. ``vmap_check()`` returns why vmap cannot run the model, or "".
    """
    if requested == 0 and device.type == "cpu" and measure is not None:
        return measure(), ""
    if requested == 1 or (requested == 0 and device.type == "cpu"):
        return 1, ""
    if recompute_bn:
        return 1, "model.bn = recompute (running statistics are re-estimated for each point)"
    if mode == "train":
        return 1, "model.mode = train (batch statistics change buffers in place)"
    k = requested if requested > 1 else bound()
    if k == 1:
        return 1, ""
    failure = vmap_check()
    return (1, failure) if failure else (k, "")
