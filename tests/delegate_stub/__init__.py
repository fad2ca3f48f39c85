"""A tiny TFLite external delegate plugin, compiled by the tests (see stub_delegate.c)."""
