import sys

from skddh.cli import main

sys.exit(main())
