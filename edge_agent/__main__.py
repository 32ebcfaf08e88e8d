"""``python -m edge_agent run --bundle FILE --data PATH`` (same as ``fedmq agent run``)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
