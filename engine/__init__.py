"""fluxbot's image engine: FLUX pipelines, memory profiles, the FIFO and its GPU workers.

Nothing here imports discord or the database. Heavy modules (torch, diffusers) are imported by the
submodules that need them, so that `import engine.spec` stays cheap.
"""
