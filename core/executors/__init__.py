"""Executors: what runs the decoding the method's stages ask for (see `pbd_core.executors.base`)."""

from .base import Executor, ExecutorSession, StreamEnd
from .local import LocalExecutor

__all__ = ["Executor", "ExecutorSession", "LocalExecutor", "StreamEnd"]
