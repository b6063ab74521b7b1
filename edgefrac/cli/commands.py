"""Import every command module so each registers its commands on ``main``."""

# Each line below imports one module that decorates its commands with @main.command().
from edgefrac.cli import infer  # noqa: F401, E402
from edgefrac.cli import info  # noqa: F401, E402
from edgefrac.cli import export  # noqa: F401, E402
from edgefrac.cli import bench  # noqa: F401, E402
