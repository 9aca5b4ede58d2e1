"""The ``streamer`` command line, one module per command group.

* :mod:`~streamer.cli.root`: the root command, shared options and helpers, :func:`main`.
* :mod:`~streamer.cli.pipeline`: ``consume``, ``replicate``.
* :mod:`~streamer.cli.load`: ``load``; :mod:`~streamer.cli.validate`: ``validate``.
* :mod:`~streamer.cli.connectors`: ``connectors validate|plan|apply|status|restart|pause|resume|delete``.
* :mod:`~streamer.cli.ops`: ``replay``, ``status``; :mod:`~streamer.cli.db`: ``db upgrade|prepare``.
* :mod:`~streamer.cli.stack`: ``stack fetch|up|down|status|env``, ``demo``.

Each command imports what it drives when it runs, so ``streamer --help`` starts fast.
"""

# isort: off
# the order commands are listed in by --help: the pipeline first, then its operation
from streamer.cli import pipeline, load, validate, ops, connectors, db, stack

# isort: on
from streamer.cli.root import _OPTIONS, app, classify, main

__all__ = [
    "_OPTIONS",
    "app",
    "classify",
    "connectors",
    "db",
    "load",
    "main",
    "ops",
    "pipeline",
    "stack",
    "validate",
]
