"""The ``clip_similarity`` context selector: text, image and entity similarity, fused per query."""
