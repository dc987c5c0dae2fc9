import sys

from tools.cgroup2_vm.run import main

sys.exit(main())
