"""Video -> interleaved data (keyframes + transition text), DESIGN.md "Data flow"."""
