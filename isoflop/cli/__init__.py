"""The ``isoflop`` command line. ``main`` turns user errors into one line on stderr and exit code 2."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from isoflop.cli import calibrate as _calibrate  # noqa: F401,E402

# Each module registers its commands on ``app`` when imported.
from isoflop.cli import count as _count  # noqa: F401,E402
from isoflop.cli import curate as _curate  # noqa: F401,E402
from isoflop.cli import estimate as _estimate  # noqa: F401,E402
from isoflop.cli import finetune as _finetune  # noqa: F401,E402
from isoflop.cli import fit as _fit  # noqa: F401,E402
from isoflop.cli import hw as _hw  # noqa: F401,E402
from isoflop.cli import ladder as _ladder  # noqa: F401,E402
from isoflop.cli import layout as _layout  # noqa: F401,E402
from isoflop.cli import merge as _merge  # noqa: F401,E402
from isoflop.cli import plan as _plan  # noqa: F401,E402
from isoflop.cli import quickstart as _quickstart  # noqa: F401,E402
from isoflop.cli import report as _report  # noqa: F401,E402
from isoflop.cli import train as _train  # noqa: F401,E402
from isoflop.cli.app import app
from isoflop.errors import IsoflopError, clip, describe_validation_error


def main() -> None:
    try:
        app()
    except IsoflopError as exc:
        print(f"error: {clip(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:
        print(f"error: {clip(describe_validation_error(exc))}", file=sys.stderr)
        sys.exit(2)
