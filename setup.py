"""Packages for the wheel (the rest of the metadata is in pyproject.toml).

``conf/`` stays at the top of the checkout, where ``python train.py`` reads it, and is shipped
as the package ``neurecon.conf`` so an installed ``neurecon-train`` finds it from any folder;
the sweeper plugin ships as ``hydra_plugins.neurecon_optuna_sweeper``, where Hydra looks.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["neurecon", "neurecon.*", "hydra_plugins.*"]),
        "neurecon.conf",
    ],
    package_dir={"neurecon.conf": "conf"},
    package_data={
        "neurecon.encoders": ["*.c"],  # the hash grid's C kernels, compiled on first use
        "neurecon.conf": ["*.yaml", "**/*.yaml"],
    },
)
