import sys

from tlatlas.cli import main

sys.exit(main())
