"""``python -m napari_scmedal`` is the ``scmedal`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
