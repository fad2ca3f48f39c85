"""edgeloop device agent: receives, checks, serves and measures TFLite models on a board."""

__version__ = "0.1.0"
