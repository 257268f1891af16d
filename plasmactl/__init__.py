"""plasmactl: the command line of plasmad, over its Unix socket (JSON-RPC 2.0)."""
