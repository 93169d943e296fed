"""Live I/O for ``logad run``: Kafka in and out, Redis session windows, the batching scorer loop, metrics, HTTP."""
