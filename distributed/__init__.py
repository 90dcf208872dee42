"""Data-parallel training of numpy_cnn models: a parameter server and workers over ZeroMQ.

    server (one process)                        worker r (one process each)
    Tensor list + Adam + reduction tree   --->  PARAMS: step, version, epoch, batch index, weights
                                          <---  GRADS: sums of its micro-shards' gradients

Workers read their micro-shards of each global batch from their own copy of the data; only
weights and gradients cross the wire. See numpy_cnn/shards.py for why the result has the same
bits for any number of workers.

Modules: protocol.py (the wire format), config.py (JobConfig), server.py (ParameterServer),
worker.py (Worker), transport.py (ZeroMQ or in-process), lifeline.py (children exit with their
launcher). Nothing is imported here, so `python -m distributed.server` and
`python -m distributed.worker` run their modules cleanly.
"""
