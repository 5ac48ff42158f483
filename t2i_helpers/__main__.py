import sys

from t2i_helpers.cli import main

sys.exit(main())
