"""iir — the Intelligent Inference Router."""

__version__ = "0.1.0"
__all__ = ["__version__"]
