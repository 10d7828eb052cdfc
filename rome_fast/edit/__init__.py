"""One edit on a model, from request to apply: templates, keys, v*, editors, guard, log."""
