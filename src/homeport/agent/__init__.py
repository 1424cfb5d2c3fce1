"""What runs on every node: the container runtimes."""
