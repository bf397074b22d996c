"""The Hydra configs of every console script (`conf/` of a checkout, `mmpretrain/conf` in a wheel).

Importing the package registers the resolvers its YAML files use; Hydra imports it to read them.
"""

from mmpretrain.cli.resolvers import register_resolvers

register_resolvers()
