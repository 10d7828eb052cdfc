"""Patches applied to third-party editing code from the outside, each a context manager that
always undoes itself: where tensors go, which statistics and templates the code sees, and
modules it imports but never uses. None of them touches the code's maths."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from transformers import BatchEncoding

_MISSING = object()
T = TypeVar("T")


@contextlib.contextmanager
def patched(target: Any, **values: Any) -> Iterator[None]:
    """Set attributes of ``target`` (a module, class or object); put the old ones back."""
    # its own attributes only: one inherited (a class's __call__) is deleted again on exit
    old = {name: vars(target).get(name, _MISSING) for name in values}
    try:
        for name, value in values.items():
            setattr(target, name, value)
        yield
    finally:
        for name, value in old.items():
            if value is _MISSING:
                delattr(target, name)
            else:
                setattr(target, name, value)


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.split(":")[0] == "cuda"


def _redirecting(fn: Callable[..., Any], target: torch.device, positional: bool) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = target
        if positional and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], target, *args[2:])
        return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def cuda_calls_to(device: torch.device) -> Iterator[None]:
    """Send tensors the code puts on a hard-coded ``"cuda"`` to ``device`` instead.

    Covers ``Tensor.to("cuda")``, ``Tensor.cuda()``, ``BatchEncoding.to("cuda")`` and
    ``device="cuda"`` in ``torch.zeros``/``torch.tensor``; a no-op when ``device`` is CUDA.
    """
    if device.type == "cuda":
        yield
        return

    def to_device(self: Tensor, *_args: Any, **_kwargs: Any) -> Tensor:
        return self.to(device)

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            patched(
                Tensor,
                to=_redirecting(Tensor.to, device, positional=True),
                cuda=to_device,
            )
        )
        stack.enter_context(
            patched(BatchEncoding, to=_redirecting(BatchEncoding.to, device, positional=True))
        )
        stack.enter_context(
            patched(
                torch,
                zeros=_redirecting(torch.zeros, device, positional=False),
                tensor=_redirecting(torch.tensor, device, positional=False),
            )
        )
        yield


@contextlib.contextmanager
def stubbed_modules(*names: str) -> Iterator[list[str]]:
    """Stand-ins for modules that cannot be imported, while a third-party module imports them.

    For packages the code imports at module level but never calls on the path the harness
    drives (EasyEdit's statistics code imports ``datasets``); any use raises. Yields the
    names actually stubbed, to record.
    """
    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _stub(name)
            stubbed.append(name)
    try:
        yield stubbed
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)


def _stub(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def missing(attribute: str) -> Any:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError(
                f"{name}.{attribute} was called, but {name} is not installed (rome-verify "
                f"stubbed it for import only); install {name}"
            )

        return fail

    module.__getattr__ = missing  # type: ignore[method-assign]
    return module


@contextlib.contextmanager
def _swapped(get: Callable[[], T], put: Callable[[T], object], value: T) -> Iterator[None]:
    """A process-wide setting (read by ``get``, written by ``put``) set to ``value``, then back."""
    previous = get()
    put(value)
    try:
        yield
    finally:
        put(previous)


def working_directory(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """Run in ``path`` (the paper's code reads ``globals.yml`` from the working directory)."""
    return _swapped(Path.cwd, os.chdir, Path(path))


def default_dtype(dtype: torch.dtype) -> contextlib.AbstractContextManager[None]:
    """``torch``'s default dtype set to ``dtype`` (tensors the code creates without one)."""
    return _swapped(torch.get_default_dtype, torch.set_default_dtype, dtype)


@contextlib.contextmanager
def captured_stdout() -> Iterator[io.StringIO]:
    """The code's progress prints, kept for the record instead of flooding the report."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


class _Moment:
    """What the public ``layer_stats`` returns, as far as ``get_inv_cov`` reads it."""

    def __init__(self, C: Tensor) -> None:
        self.mom2 = types.SimpleNamespace(moment=lambda: C)


def injected_statistics(
    compute_u: types.ModuleType, C: Tensor
) -> contextlib.AbstractContextManager[None]:
    """``compute_u.get_inv_cov`` sees ``C`` as the collected second moment (instead of a
    download or a Wikipedia pass) and starts from an empty inverse cache, so the code still
    inverts C itself, its own way."""
    return patched(compute_u, layer_stats=lambda *_args, **_kwargs: _Moment(C), inv_mom2_cache={})


def injected_templates(
    main: types.ModuleType, templates: list[str]
) -> contextlib.AbstractContextManager[None]:
    """The code's module-global template cache holds the harness's templates."""
    return patched(main, CONTEXT_TEMPLATES_CACHE=list(templates))


def injected_layer_statistics(
    main: types.ModuleType, C_by_module: dict[str, Tensor]
) -> contextlib.AbstractContextManager[None]:
    """The public MEMIT ``get_cov`` sees ``C_by_module[name]`` as the second moment collected
    at module ``name`` (its ``layer_stats`` gets the module name third) and starts from an
    empty ``COV_CACHE`` (keyed by model name, so it would hand one model's C to another)."""

    def statistics(_model: Any, _tok: Any, module_name: str, *_args: Any, **_kwargs: Any) -> Any:
        return _Moment(C_by_module[module_name])

    return patched(main, layer_stats=statistics, COV_CACHE={})


@contextlib.contextmanager
def module_globals(module: types.ModuleType, names: Sequence[str], **values: Any) -> Iterator[None]:
    """The module-level globals ``names`` as a fresh import has them: absent, or set to
    ``values``; on exit each is put back as it was (absent again if it was). For code that
    keeps state in globals across calls (AlphaEdit's projector and key cache)."""
    namespace = vars(module)
    old = {name: namespace.pop(name, _MISSING) for name in names}
    namespace.update(values)
    try:
        yield
    finally:
        for name in names:
            namespace.pop(name, None)
        namespace.update({name: value for name, value in old.items() if value is not _MISSING})


@contextlib.contextmanager
def isolated_packages(*names: str) -> Iterator[None]:
    """Import top-level packages ``names`` afresh, then put back whatever held those names.

    Two public checkouts ship different packages under the same names (``rome``, ``util``);
    modules already imported keep their own references, so each checkout sees its own.
    """

    def ours(module: str) -> bool:
        return module.split(".", maxsplit=1)[0] in names

    stashed = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in stashed:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(stashed)


@contextlib.contextmanager
def tuple_block_outputs(blocks: nn.ModuleList) -> Iterator[None]:
    """Hooks on ``blocks`` see their output as ``(hidden,)``, while the model still gets the
    tensor: code written for transformers 4 indexes a block's output with ``[0]`` (MEMIT's
    ``compute_z``), which on a transformers 5 tensor would pick the first sequence instead.

    A hook placed before every other turns the tensor into a plain 1-tuple (the code tests
    ``type(x) is tuple``), remembered by identity; the blocks' class ``__call__`` hands the
    model back its element. Blocks that return tuples themselves are left as they are.
    """
    made: dict[int, tuple[Tensor]] = {}  # id -> the tuple, kept alive until handed back

    def as_tuple(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            return output
        wrapped = (output,)
        made[id(wrapped)] = wrapped
        return wrapped

    def untupled_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = nn.Module.__call__(self, *args, **kwargs)
        return made.pop(id(output))[0] if id(output) in made else output

    with contextlib.ExitStack() as stack:
        for cls in {type(block) for block in blocks}:
            stack.enter_context(patched(cls, __call__=untupled_call))
        for block in blocks:
            handle = block.register_forward_hook(as_tuple, prepend=True)
            stack.callback(handle.remove)
        yield


def template_groups(templates: Sequence[str]) -> list[list[str]]:
    """The harness's templates as the two groups the MEMIT-family codes cache,
    ``[["{}"], [the prefixed templates]]`` (their ``compute_ks`` averages within, then across,
    groups); a single ``[["{}"]]`` without prefixes, since an empty group's mean is NaN."""
    prefixed = [t for t in templates if t != "{}"]
    return [["{}"], prefixed] if prefixed else [["{}"]]


@dataclass
class Captured:
    """What a MEMIT-family code computed during one edit, in the order it computed it."""

    keys: list[tuple[int, Tensor]] = field(default_factory=list)  # (layer, K (d_in, n))
    outputs: list[Tensor] = field(default_factory=list)  # per layer: H (d, n) before its solve
    targets: list[Tensor] = field(default_factory=list)  # per fact: z (d,)
    deltas: dict[int, Tensor] = field(default_factory=dict)  # per layer: ΔW (d_out, d_in) written

    def residuals(self) -> list[Tensor]:
        """Per edited layer: Z − H (d, n), the residual before dividing by the layers left."""
        Z = torch.stack(self.targets, dim=1)
        return [Z - H for H in self.outputs]


def capturing(
    main: types.ModuleType, captured: Captured
) -> contextlib.AbstractContextManager[None]:
    """The main module's calls of ``compute_ks``, ``compute_z`` and the residual's outputs
    (``get_module_input_output_at_words``: ``(inputs, outputs)``, or the outputs alone when
    called with ``track="out"``), recorded into ``captured`` on their way back (detached
    copies; the code sees its own results)."""

    def keys(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapper(*args: Any, **kwargs: Any) -> Tensor:
            K = fn(*args, **kwargs)  # (n, d_in)
            captured.keys.append((int(args[4]), K.detach().T.clone()))
            return K

        return wrapper

    def target(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapper(*args: Any, **kwargs: Any) -> Tensor:
            z = fn(*args, **kwargs)  # (d,)
            captured.targets.append(z.detach().clone())
            return z

        return wrapper

    def outputs(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            outs = result[1] if isinstance(result, tuple) else result  # (n, d)
            captured.outputs.append(outs.detach().T.clone())
            return result

        return wrapper

    return patched(
        main,
        compute_ks=keys(main.compute_ks),
        compute_z=target(main.compute_z),
        get_module_input_output_at_words=outputs(main.get_module_input_output_at_words),
    )
