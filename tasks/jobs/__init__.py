"""The job domain, shared by the API and the workers (no torch, no Flask).

- ``request``: the typed request every door hands ``JobService.accept``, and its answer
- ``service``: accept, read, follow and cancel jobs (what the API calls)
- ``store``: the job store (one Redis hash per job, its event stream, its state
  changes), with its Lua scripts in ``scripts`` and ``holding`` (a worker's receive
  and start)
- ``ends``: the one place a job ends (the end script, then its webhook)
- ``records``: what a job record holds, and its public views
- ``schema``: the job schema every door and the Celery task validate with
- ``inputs``: image inputs (checked, fetched, stored, read back)
- ``bookkeeping``: Redis bookkeeping around jobs (queued set, active set per key,
  worker heartbeats, throughput, counters), and every Redis key Kiln spells
- ``fleet``: the API's reader of fleet figures (queue depth, ready workers, rates)
- ``listing``: one API key's jobs, a bounded page at a time
- ``storage``: object storage (S3)
- ``urlsafety`` and ``egress``: which webhook and input URLs may be called, and the
  one client that calls them
- ``sending``: the one way a ``kiln.generate`` message is sent (broker only)
- ``celery_door``: ``send_generate`` for Python services that install Kiln
"""
