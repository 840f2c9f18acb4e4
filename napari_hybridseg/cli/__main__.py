import sys

from napari_hybridseg.cli import main

sys.exit(main())
