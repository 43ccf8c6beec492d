"""The real Kiln stack on free ports, for the tests and the benchmarks alike.

- ``stack``: Valkey, an S3 server, workers and the API as real subprocesses
- ``http``: a plain HTTP client of the API, as any caller would write it
- ``metrics``: read a Prometheus ``/metrics`` page
- ``hold``: hold a worker's device with a job until the jobs under test wait together
- ``launcher``: start those processes as forks of one that imported their libraries once
  (``launcher_server``: that process)

Neither a test module nor a benchmark: both import from here, never from each other.
"""
