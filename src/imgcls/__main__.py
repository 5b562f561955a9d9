"""`python -m imgcls`, and what torchrun starts in each process (`torchrun ... -m imgcls train`)."""
from .cli.main import run

run()
