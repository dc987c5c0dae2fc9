import sys

from tools.critest.run import main

sys.exit(main())
