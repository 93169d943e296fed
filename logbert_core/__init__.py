"""Pure computation for logad: log-line records, template keys, windows, the LogBERT model, scoring, bundles.

Nothing here talks to Kafka, Redis or the network; ``streamer`` and ``training`` do the I/O around it.
"""
