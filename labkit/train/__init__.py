"""train: the SPMD train and eval steps, optimizers, checkpoints, and the loop ``train_and_evaluate``.

Must not: define models, collectives or data pipelines.
"""
from labkit.train.loop import NonFiniteLossError, train_and_evaluate
from labkit.train.step import TrainState, create_train_state, cross_entropy_loss, make_eval_step, make_train_step

__all__ = ["train_and_evaluate", "NonFiniteLossError", "TrainState", "create_train_state", "cross_entropy_loss",
           "make_train_step", "make_eval_step"]
