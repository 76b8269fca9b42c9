"""Command-line checks of the theory, headed by ``python -m verification.ou_check``."""

__all__: list[str] = []
