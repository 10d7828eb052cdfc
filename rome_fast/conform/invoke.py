"""Calling the editor under test: in a thread with a time limit, its failures caught and
described (they are verdicts, never errors of the harness). A call that hangs cannot be killed
and its thread may still write into the model: over one run (:class:`TimeLimit`) the editor
then gets no later call."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rome_fast.conform.protocol import ConformInputs, EditorUnderTest
from rome_fast.edit.ownership import Fingerprint, fingerprint, require_own
from rome_fast.infra.errors import RunStoppedError


class EditorFailed(RuntimeError):
    """The editor under test raised, hung or returned nonsense (``rome eval --editor``)."""


class EditorHung(EditorFailed):
    """The editor did not return in time; its thread may still write into the model."""


def _where(error: BaseException) -> str:
    """The innermost line of the editor's own code (not of an installed library)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if "site-packages" not in f.filename
    ]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def run_timed(work: Callable[[], object], name: str, timeout: float | None, hung: str) -> object:
    """``work()`` in a thread named ``name``: what it returned; raises what it raised, and
    :class:`EditorHung` with the message ``hung`` after ``timeout`` seconds (None: no limit)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except Exception as error:
            box["error"] = error

    # a daemon thread: a hung editor cannot keep the process alive after the report
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise EditorHung(f"{hung} (raise --timeout if it is only slow)")
    error = box.get("error")
    if isinstance(error, BaseException):
        raise error
    return box.get("value")


@dataclass
class TimeLimit:
    """``timeout`` seconds (None: no limit) for each call of one editor under test over a run,
    each call doing one ``per`` (edit, batch); after a call that hung, every later one is
    refused without running (:class:`EditorHung`, naming the call that hung)."""

    timeout: float | None
    per: str
    hung: str | None = None

    def run(self, work: Callable[[], object], name: str, hung: str) -> object:
        """:func:`run_timed` within the limit, unless an earlier call hung."""
        if self.hung is not None:
            raise EditorHung(f"not run: an earlier {self.per} hung ({self.hung})")
        try:
            return run_timed(work, name, self.timeout, hung)
        except EditorHung as error:
            self.hung = str(error)
            raise


def require_untouched(
    module: nn.Module, module_name: str, noted: Fingerprint, action: str, limit: TimeLimit
) -> None:
    """``require_own`` for a weight the harness wrote or put back for an editor under test.
    After a call hung, its thread may still write, by any route (a write through ``.data``
    moves no version counter): the digest is compared every time, and a change stops the run
    (``RunStoppedError``) naming the call that hung."""
    if limit.hung is None:
        require_own(module, module_name, noted, action)
    elif fingerprint(module)[1] != noted[1]:
        raise RunStoppedError(
            f"cannot {action}: {module_name}.weight changed after the editor under test's "
            f"{limit.per} was given up ({limit.hung}); its thread is still writing into the "
            "model, so nothing scored since can be trusted and the run stops"
        )


@dataclass
class WatchedWeights:
    """The weights the harness wrote or put back for an editor under test, each with its
    fingerprint then: before the next write, revert or restore, each must be as noted
    (``require_untouched``). Cleared when the run itself writes them again."""

    limit: TimeLimit
    noted: dict[str, tuple[nn.Module, Fingerprint]] = field(default_factory=dict)

    def note(self, modules: dict[str, nn.Module]) -> None:
        self.noted |= {name: (module, fingerprint(module)) for name, module in modules.items()}

    def require(self, action: str) -> None:
        for name, (module, noted) in self.noted.items():
            require_untouched(module, name, noted, action, self.limit)

    def clear(self) -> None:
        self.noted.clear()


def seconds(timeout: float | None) -> str:
    return "∞" if timeout is None else f"{timeout:g}"


def describe_raise(name: str, error: BaseException, where: str) -> str:
    """One line naming the editor, what it raised, the line of its code, and the input."""
    return f"{name} raised {type(error).__name__}: {error}{_where(error)} on {where}"


def call_editor(
    editor: EditorUnderTest, inputs: ConformInputs, W: Tensor, limit: TimeLimit
) -> str | None:
    """Run one edit (a returned ΔW (d_out, d_in) is added to ``W``); the reason it failed,
    or None. Raises :class:`EditorHung` when it hangs or an earlier call hung (``limit``)."""
    where = f"{inputs.loaded.name} for {inputs.request.subject!r}"
    try:
        delta = limit.run(
            lambda: editor.edit(inputs),
            f"editor {editor.name}",
            f"{editor.name} did not return within {seconds(limit.timeout)} s on {where}",
        )
    except EditorHung:
        raise
    except Exception as error:
        return describe_raise(editor.name, error, where)
    if delta is None:
        return None
    if not isinstance(delta, Tensor) or tuple(delta.shape) != tuple(W.shape):
        shape = tuple(delta.shape) if isinstance(delta, Tensor) else type(delta).__name__
        return (
            f"{editor.name} returned ΔW of shape {shape}; the edited weight is "
            f"(d_out, d_in) = {tuple(W.shape)}"
        )
    with torch.no_grad():
        W.add_(delta.to(W.device, W.dtype))
    return None


def edit_in_place(
    editor: EditorUnderTest, inputs: ConformInputs, W: Tensor, limit: TimeLimit
) -> None:
    """:func:`call_editor` for callers that stop on a failure: raises :class:`EditorFailed`."""
    failure = call_editor(editor, inputs, W, limit)
    if failure is not None:
        raise EditorFailed(failure)
