"""Training a run: ``fit`` (the recipe), one epoch (``epoch``), the LR range test
(``lr_finder``), the One Cycle schedule (``schedule``), signals and resumability
(``lifecycle``), timing (``profiling``) and TensorBoard (``tensorboard_log``).
The public names are importable from ``cifar_resnet``."""
