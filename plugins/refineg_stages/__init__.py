"""The built-in MLLM stages (``refineg.stages`` plugins): ``refine`` and ``ground``.

They are plugins like any third-party stage: the core's frame
(``refineg_core.pipeline.mllm_stage``) asks the backend, caches, retries,
counts and resumes; a stage supplies only its own parts (which samples it
asks about, the request, reading the answer, the new entities). A config picks
a stage with ``[refine] plugin`` / ``[ground] plugin`` (default: these).

``refine``: the MLLM re-decides the entities the uncertainty gate delegated
(``refine.py``). ``ground``: boxes for the final entities by in-context
learning with demonstrations (``ground.py``, ``demos.py``). ``prompts``: the
templates and the requests both build. ``testing``: stage inputs for tests and
benchmarks (painted images, tagger-like predictions, scripted backends, a
deterministic selector).
"""
