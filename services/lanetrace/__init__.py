"""lanetrace: a low-overhead function tracer for Linux."""
__version__ = "0.1.0"
