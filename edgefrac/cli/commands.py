"""Import every command module so each registers its commands on ``main``."""

# Each line below imports one module that decorates its commands with @main.command().
