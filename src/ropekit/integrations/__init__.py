"""Integrations with other tools (imported on use; each needs its optional extra, e.g. ``pip install ropekit[lm-eval]``)."""
