"""The Shapes world (DESIGN.md, "The embedded default"): procedural scenes with exact ground truth.

palette (colours, shapes, backgrounds) -> geometry (unit outlines, GenEval relation rule) ->
scene (objects, layout, sampling) -> render (anti-aliased image + label maps) -> captions,
prompts (GenEval sets), dpg (question graphs), edits (edit and subject pairs), video (event logs).
`python main.py world` writes any of them as webdataset shards.
"""
