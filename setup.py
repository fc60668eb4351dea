"""Build script.

The package metadata lives in pyproject.toml. This file exists for the compiled backends: the
fused kernels (csrc/) are added here as a torch extension when they land, built only where a C++
compiler (and, for CUDA, the toolkit) is present, so that a machine without one still installs
the pure-PyTorch package.
"""
from setuptools import setup

setup()
