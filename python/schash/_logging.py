"""The package logger: ``logging.getLogger("schash")`` with a NullHandler.

schash never configures logging globally; applications decide where messages go.
"""

import logging

logger = logging.getLogger("schash")
logger.addHandler(logging.NullHandler())
