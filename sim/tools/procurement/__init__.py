"""The cheapest fleet meeting latency targets: analytic pruning, DES confirmation, sensitivity."""
