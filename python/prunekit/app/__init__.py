"""The application on top of the library: the ``prunekit`` command (:mod:`.cli`), the MiniLM demo
(:mod:`.demo`), reports and plots (:mod:`.report`), evaluation data and metrics
(:mod:`.evaluation`) and the benchmarks (:mod:`.benchmarks`, also run by bench/*.py).

The library (everything in prunekit outside this package) never imports it; ``import prunekit``
leaves it unloaded.
"""
