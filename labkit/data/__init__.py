"""data: input for labkit runs. (The tf.data ImageNet-format pipelines arrive with the input-pipeline issue.)

Must not: touch models or training state.
"""
from labkit.data.fixed import digits_batch

__all__ = ["digits_batch"]
