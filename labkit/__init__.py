"""labkit: a Jupyter-first lab for the systems ideas of "Image Classification at Supercomputer Scale".

This package file imports nothing: ``python -m labkit.install`` must run before jax, TensorFlow or any other
requirement is installed (the Colab install cell), and ``import labkit`` stays cheap everywhere.
"""
