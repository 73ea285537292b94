from ghostnet_jax.export.cli import main

main()
