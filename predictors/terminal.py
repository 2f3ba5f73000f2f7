"""The predictor commands' terminal: the console they print to and the logging they set up.

Imports rich and the standard library only.
"""

from __future__ import annotations

import logging

from rich.console import Console

console = Console()


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
