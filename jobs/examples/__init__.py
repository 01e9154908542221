"""Example jobs on real data; each module builds its input and runs the spec beside it."""
