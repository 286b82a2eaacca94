"""neurecon's Hydra configs, installed as the package ``neurecon.conf`` (see ``setup.py``).

Hydra reads a packaged config folder only when it holds an ``__init__.py``: this file.
"""
