"""The kit tests' operator as a process: operator_main.py SOURCE TARGET SLOT PUBLICATION URL."""

from __future__ import annotations

import logging
import sys

from kit_support import project
from process_status_postgres import Operator, OperatorOptions

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="operator %(levelname)s %(message)s")
    source, target, slot, publication, url = sys.argv[1:6]
    operator = Operator(OperatorOptions(source_dsn=source, target_dsn=target, slot=slot,
                                        publication=publication, status_url=url), project)
    operator.stop_on_signals()
    operator.run()
