"""What runs inside Kiln's worker processes (the API never imports this room).

- ``main``: ``kiln worker --model M --gpu I``: pin the GPU, load and warm, consume
- ``runtime``: what one worker process holds (engine, job store, storage,
  heartbeat and cancel-listener threads)
- ``generate``: the ``kiln.generate`` task, the job's steps top to bottom
- ``time_limits``: soft and hard time limits on a threads pool
- ``progress``: progress and throughput writes off the engine's hot path
- ``images``: PNG encoding with the generation parameters
- ``metrics``: the worker's own Prometheus metrics
- ``webhooks``: the ``kiln.deliver_webhook`` task (the webhooks worker)
"""
