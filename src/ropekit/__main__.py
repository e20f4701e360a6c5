"""``python -m ropekit …`` (also ``accelerate launch -m ropekit train …``)."""

from .cli import app

app()
