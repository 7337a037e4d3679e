import sys

from rlsproxy.cli import main

sys.exit(main())
