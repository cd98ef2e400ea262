"""train: the SPMD train step, and (for now) a short distributed demo; the full loop grows here.

Must not: define models, collectives or data pipelines.
"""
from labkit.train.step import TrainState, create_train_state, cross_entropy_loss, make_train_step

__all__ = ["TrainState", "create_train_state", "cross_entropy_loss", "make_train_step"]
