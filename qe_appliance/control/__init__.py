"""The control plane: an admin API on a unix socket, and the CLI that talks to it."""
