"""The Ray Data engine, registered as the ``ray`` engine (``refineg.engines``) like any
third-party engine: ``[engine] kind = "ray"`` or ``refineg run --engine ray``.

``engine`` fans a stage's chunks out to Ray Data actor pools that each build the
run's ``Worker`` from the same config; ``reaper`` ends a local Ray's processes
once the driver is gone. Needs the ``ray`` extra (``pip install 'refineg[ray]'``).
"""
