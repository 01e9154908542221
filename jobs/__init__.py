"""jobs: job specs, the `gpgrid` command, and the demo."""
