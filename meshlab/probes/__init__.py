"""Kernel-behaviour probes: small experiments in private network namespaces that tell a suite
which outcome to expect on the kernel it runs on (e.g. :mod:`meshlab.probes.challenge_ack`)."""
