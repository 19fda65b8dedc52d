"""Where results go: the HDF5 file of each series (:mod:`.hdf5`) and the msgpack PUB socket
(:mod:`.publisher`), both :class:`~livediff.sinks.base.Sink` implementations.

Sinks import the model, the outputs and the wire schema; never an operator.
"""
