"""Taking extended models elsewhere: self-contained checkpoints (:mod:`.bundle`), GGUF for llama.cpp (:mod:`.gguf`).

Submodules are imported on use; nothing here is loaded by ``import ropekit``.
"""
