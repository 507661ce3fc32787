"""Training job for the Fashion-MNIST dropout MLP: ``python -m training --out DIR``.

Entry points: :func:`training.pipeline.run` with a :class:`training.config.TrainConfig`, or the CLI.
"""
