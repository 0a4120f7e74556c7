"""The shared base every layer may import: the error contract and exit codes
(``errors``), atomic and bounded file I/O (``fileio``) and the NIR dialect spikebridge
writes and reads (``dialect``: node kinds, the metadata key). It imports nothing else of
spikebridge."""
