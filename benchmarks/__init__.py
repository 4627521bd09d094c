"""Benchmarks of the hub: declarative scenarios (scenarios.py) run by shared measuring code, results as CSV.

    python -m benchmarks.run [--hub URL] [--only NAME ...] [--out DIR]   # the demo scenarios against a running hub
    python -m benchmarks.router_overhead                                 # direct vs hub vs peers, its own hub
    python -m benchmarks.image_batching                                  # images/s batching off/on, its own hub

Modules: metrics (pure arithmetic: percentiles, vLLM bench serve metrics), measure (timed HTTP requests), text,
images, image_batching (batching off/on, the cost of streamed previews), memory (peaks -> the hub's memory ledger),
lifecycle (cold start, swap), router_overhead (with peers: the servers it starts and pins, loadgen: its aiohttp load
generator, bare_proxy: the floor), results (CSV).
The notebooks (notebooks/*.ipynb) call the same functions.
"""
