"""The job domain, shared by the API and the workers (no torch, no Flask).

- ``store``: the job store (one Redis hash per job, its event stream, transitions)
- ``records``: what a job record holds, and its public views
- ``schema``: the job schema every door and the Celery task validate with
- ``bookkeeping``: Redis bookkeeping around jobs (queued set, active set per key,
  worker heartbeats, throughput, counters); the only module that spells those keys
- ``fleet``: the one reader of fleet figures (queue depth, ready workers, rates)
- ``service``: submit, read, follow and cancel jobs (what the API calls)
- ``storage``: object storage (S3)
- ``urlsafety``: which webhook targets may be called
- ``celery_door``: ``send_generate`` for Python services that install Kiln
"""
