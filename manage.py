#!/usr/bin/env python
"""Django's command-line utility for EmbedHub."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    # platform/ is an import root, not a package: appending it keeps the stdlib `platform` first.
    for path in (str(ROOT), str(ROOT / "platform")):
        if path not in sys.path:
            sys.path.append(path)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedhub.settings.base")
    if sys.argv[1:2] == ["services"]:
        # `services status|stop` must not start what it is asked about, and managing local
        # processes serves nothing, so it needs no production SECRET_KEY.
        os.environ["EMBEDHUB_AUTOSTART"] = "0"
        os.environ.setdefault("DEBUG", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
