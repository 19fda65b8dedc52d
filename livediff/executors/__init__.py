"""Executors run chains off the event loop: the boundary between the service and the operators."""
from .threads import ThreadExecutor

__all__ = ["ThreadExecutor"]
