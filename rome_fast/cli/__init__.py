"""The `rome` command line: one module per command, the options they share."""
