import sys

from ecl.cli import main

sys.exit(main())
