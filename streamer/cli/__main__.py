"""``python -m streamer.cli``: the same as the ``streamer`` command (supervised children, benchmarks)."""

from streamer.cli.root import main

main()
