"""The torch part of sgd-noise: datasets, models, SGD with schedules of η and S, curvature measurements and the
paper's network experiments. It needs the ``torch`` extra; the theory packages (``sde``, ``quadratic``,
``verification``) import and run without torch."""

__all__: list[str] = []
