"""Import every command module so each registers its commands on ``main``."""

# Each line below imports one module that decorates its commands with @main.command().
from edgefrac.cli import dev  # noqa: F401, E402  (split, train)
from edgefrac.cli import evaluate  # noqa: F401, E402
from edgefrac.cli import infer  # noqa: F401, E402
from edgefrac.cli import info  # noqa: F401, E402
from edgefrac.cli import export  # noqa: F401, E402
from edgefrac.cli import bench  # noqa: F401, E402
from edgefrac.cli import edgetpu  # noqa: F401, E402  (edgetpu-check)
from edgefrac.cli import capture  # noqa: F401, E402  (capture)
from edgefrac.cli import convert  # noqa: F401, E402
from edgefrac.cli import threshold  # noqa: F401, E402
