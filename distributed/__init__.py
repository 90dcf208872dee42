"""Data-parallel training of numpy_cnn models: a parameter server and workers over ZeroMQ.

Installed as numpy_cnn.distributed (the folder's name alone is Dask's package).

    server (one process)                        worker r (one process each)
    Tensor list + Adam + reduction tree   --->  PARAMS: step, version, epoch, batch index, weights
                                          <---  GRADS: sums of its micro-shards' gradients

Workers read their micro-shards of each global batch from their own copy of the data; only
weights and gradients cross the wire. See numpy_cnn/shards.py for why the result has the same
bits for any number of workers.

Modules, in the order a gradient meets them: config.py (JobConfig), worker.py (Worker and its
loop), protocol.py (the wire format), transport.py (ZeroMQ or in-process, one Transport
interface), keys.py (CURVE keys), server.py (ParameterServer), ledger.py (one step's
bookkeeping), ranks.py (who computes which micro-shards), stats.py (where a step's time went),
inprocess.py (a server and its workers in one process), lifeline.py (children exit with their
launcher). The processes' entry points are `launch server` and `launch worker`.
"""
