"""`python -m numpy_cnn.launch`: the same as the `launch` command."""

import sys

from .cli import main

sys.exit(main())
