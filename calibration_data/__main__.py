import sys

from calibration_data.manifest import main

sys.exit(main())
