"""banger's VM lifecycle benchmark (``python -m bench.run``); see bench/README.md."""
