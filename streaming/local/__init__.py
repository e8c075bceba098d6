"""The local harness: the pipeline's real parts run as a cluster on this machine, on loopback (cluster.py),
faults injected into it (nemesis.py) and its outputs checked against its inputs (checker.py). Apart from
the production job: nothing under streaming/ outside this folder imports it."""
