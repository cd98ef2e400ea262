"""bench: every ``labkit bench`` command, in one room on the top floor beside the CLI, sharing one timer.

``collectives`` (``labkit bench collectives``), ``input`` (``labkit bench input``), ``train``
(``labkit bench train``), ``peers`` (``labkit bench peers``: labkit against Flax-example-style baselines), and
``timer`` (the one clock they all use: interleaved blocks, a device sync at the end of every timed block).
Benchmarks may import anything below them (config, data, collectives, train, telemetry); nothing below imports
them. Must not: hold logic the training run needs (they measure it; they do not define it).
"""
