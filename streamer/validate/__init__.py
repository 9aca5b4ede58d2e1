"""``streamer validate``: prove source == target, show the differences, repair them.

:mod:`~streamer.validate.core` (column kinds, exact normalization), :mod:`~streamer.validate.fast`
(server-side hashes and polars streams), :mod:`~streamer.validate.compare` (ranges, arbiter),
:mod:`~streamer.validate.report` (terminal, plain lines, JSON), :mod:`~streamer.validate.repair`.
"""

from streamer.validate.compare import compare_tables, validate_table
from streamer.validate.core import (
    SourceColumn,
    TableDiff,
    ValidationSetupError,
    describe,
    normalize,
)

__all__ = [
    "SourceColumn",
    "TableDiff",
    "ValidationSetupError",
    "compare_tables",
    "describe",
    "normalize",
    "validate_table",
]
