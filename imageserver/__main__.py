"""`python -m imageserver`: run the image server (see imageserver/server.py)."""

import sys

from imageserver.server import main

sys.exit(main())
