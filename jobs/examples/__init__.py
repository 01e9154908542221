"""Example jobs on real data: `gpgrid example NAME` (catalog.py) builds the input, writes the
spec beside it, runs and scores it; nyc_airports.py is run as a module."""
