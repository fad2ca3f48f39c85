"""`edge-deploy`: the host command line, one module per command group (see deploy.cli.main)."""

from deploy.cli.main import main

__all__ = ["main"]
