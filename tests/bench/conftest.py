"""The bench tests reuse the data tests' tiny ImageNet-schema TFRecords."""
from tests.data.conftest import tiny  # noqa: F401 - a session fixture, shared
