"""nsproxy: one host process serving an HTTP endpoint inside every tenant's network namespace."""

__version__ = "0.1.0"
