"""Build script: the Python packages (see pyproject.toml for metadata)."""
from setuptools import setup

setup()
