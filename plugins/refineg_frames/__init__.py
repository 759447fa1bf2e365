"""Built-in box frames (``refineg.box_frames`` plugins).

``generic``: ``pixels`` (pixels of the image as sent) and ``normalized`` (a
fixed 0..scale grid). ``qwen``: the Qwen-VL family's conventions, which depend
on how its image processor resizes (``smart_resize``).
"""
