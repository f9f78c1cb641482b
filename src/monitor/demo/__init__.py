"""The offline demo: a bundled news site, a local webhook receiver, and a runner."""
