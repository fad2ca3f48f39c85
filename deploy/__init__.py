"""edgeloop host side: convert, re-quantize, roll out and watch models on a fleet."""

__version__ = "0.1.0"
