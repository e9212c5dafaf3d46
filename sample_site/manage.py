#!/usr/bin/env python
"""Django's command-line utility for the sample site. Run it from anywhere."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Import the project as the package ``sample_site`` (from the repository root), not
    # from inside it, where ``sample_site/celery.py`` would shadow the celery package.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
