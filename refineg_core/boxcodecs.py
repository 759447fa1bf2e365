"""The box-frame contract, ``BoxCodec`` (defined with the other contracts in
``refineg_core.interfaces``; this module keeps the name frames import it by).

Frames are plugins (kind ``box_frame`` in ``refineg_core.kinds``); the built-in
ones live in the ``refineg_frames`` package, and the core resolves a backend's
frame with ``refineg_core.registry.backend_frame``.
"""

from refineg_core.interfaces import BoxCodec

__all__ = ["BoxCodec"]
