"""Where results go: the msgpack PUB socket and the HDF5 file of each series."""
