"""Errors that stop a run for a reason outside our code, shown to a user in one line."""

from __future__ import annotations


class RunStoppedError(RuntimeError):
    """The run cannot go on without losing or hiding a change: a weight the run does not own
    was written (an editor under test wrote outside its layers; another writer changed a
    weight since ours), or the weights are not what a restore must give. The message names
    the weights and what to do; ``rome`` prints it in one line and exits 1."""
