"""`python -m ghostnet_jax.export`: the export command line (ghostnet_jax/export/cli.py)."""

from ghostnet_jax.export.cli import main

main()
