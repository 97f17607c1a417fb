"""The NeuS reconstruction engine (``python -m engine``; contract in PROTOCOL.md)."""

from .cpu_threads import prepare_environment

prepare_environment()  # before any engine module imports torch: OpenMP reads its wait policy once
