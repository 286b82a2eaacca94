"""neurecon: neural surface reconstruction experiments (NeuS, NeRF) composed with Hydra.

Importing the package registers the typed config nodes (:mod:`neurecon.schema`) that
``conf/`` names in its defaults lists, so any way of composing the config works.
"""

from neurecon import schema as _schema  # noqa: F401
