"""Only for the optional C accelerator; all metadata lives in setup.cfg.

``optional=True``: where the extension cannot be built (no compiler), greenbridge installs and
runs in pure Python, just slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("greenbridge._speedups", ["greenbridge/_speedups.c"], optional=True),
    ]
)
