"""mohlog bpf."""
