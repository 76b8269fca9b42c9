"""Tools for the developers of sgd-noise, not part of the installed package: the import-linter contract that keeps
private names private (``devtools.import_contracts``)."""
