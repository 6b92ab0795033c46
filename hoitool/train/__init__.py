"""Training stages: train-teacher, distill (and DML) over a features store; entry point ``hoitool.train.loop.train``."""
