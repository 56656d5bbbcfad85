"""`python -m cli COMMAND`: the same as `aiwrap COMMAND`."""

import sys

from cli.main import main

sys.exit(main())
