"""The ``crosstask`` command: thin Typer shells over the Python API."""
