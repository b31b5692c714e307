"""Build script: the pure-Python packages always; the CUDA extension when nvcc is found.

The extension build (csrc/ext/, kernels from csrc/*.cu) is added by the CUDA plumbing work.
"""

from setuptools import setup

setup(
    packages=["numpy_ref", "tfm_kernels"],
)
